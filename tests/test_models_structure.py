"""The shape of evf_sam/models: one registry in which every SAM variant and every prompt encoder is
declared once, listing names without importing Meta's sam2, and an acyclic import graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from evf_sam.models import registry
from evf_sam.models.beit3 import BEIT3_CONFIGS
from evf_sam.models.efficient_sam import EFFICIENT_SAM_CONFIGS, EfficientSam, build_efficient_sam
from evf_sam.models.encoders import CLIP_PRESETS, VILT_PRESETS, build_prompt_encoder, encoder_kind
from evf_sam.models.sam import SAM_CONFIGS, SamBackend, build_sam
from evf_sam.models.sam2_backend import SAM2_CONFIGS, build_sam2_backend
from evf_sam.models.sam_backends import SAM_VARIANTS, build_sam_backend, resize_mode_of, sam_family

ROOT = Path(__file__).resolve().parents[1]


def test_every_sam_variant_is_registered_once_with_its_familys_builder():
    tables = {"sam": (SAM_CONFIGS, build_sam, SamBackend.resize_mode),
              "efficient_sam": (EFFICIENT_SAM_CONFIGS, build_efficient_sam, EfficientSam.resize_mode),
              "sam2": (SAM2_CONFIGS, build_sam2_backend, "square")}
    assert SAM_VARIANTS == tuple(v for table, _, _ in tables.values() for v in table)  # paper Tab. 7 order
    assert len(set(SAM_VARIANTS)) == len(SAM_VARIANTS)
    for family, (table, build, mode) in tables.items():
        for v in table:
            entry = registry.sam_family_of(v)
            assert (entry.name, entry.build, entry.resize_mode) == (family, build, mode)
            assert (sam_family(v), resize_mode_of(v)) == (family, mode)
    assert (SamBackend.resize_mode, EfficientSam.resize_mode) == ("pad", "square")


def test_every_encoder_is_registered_once():
    names = registry.encoder_names()
    assert names == (*BEIT3_CONFIGS, *CLIP_PRESETS, *VILT_PRESETS) and len(set(names)) == len(names)
    assert [encoder_kind(n) for n in names] == ["beit3"] * 3 + ["clip"] * 3 + ["vilt"] * 2
    assert registry.encoder_family_of("clip_huge").fusions == ("text", "late")
    with pytest.raises(ValueError, match="unknown encoder 'gpt'; choose one of beit3_large, .*vilt_tiny"):
        build_prompt_encoder("gpt")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already taken: tiny"):
        registry.register_sam_family("toy", resize_mode="pad", variants={"tiny": None})(build_sam)
    with pytest.raises(ValueError, match="family 'sam' is registered twice"):
        registry.register_sam_family("sam", resize_mode="pad", variants={"other": None})(build_sam)
    with pytest.raises(ValueError, match="already taken: clip_tiny"):
        registry.register_encoder_family("toy", fusions=("text",), variants={"clip_tiny": None})(lambda: None)
    assert "toy" not in {registry.sam_family_of(v).name for v in SAM_VARIANTS}


def test_a_variant_builds_through_the_registry():
    import torch

    with torch.device("meta"):
        sam = build_sam_backend("vit_b")
    assert type(sam) is SamBackend and (sam.image_size, sam.prompt_dim, sam.image_embedding_size) == \
        (1024, 256, (64, 64))


def test_listing_and_validating_variants_does_not_import_sam2():
    code = ("import sys\n"
            "from evf_sam.models.evf_sam import EvfSamConfig\n"
            "from evf_sam.models.sam_backends import SAM_VARIANTS, resize_mode_of, sam_family\n"
            "assert sam_family('sam2_hiera_l') == 'sam2' and resize_mode_of('sam2_tiny') == 'square'\n"
            "EvfSamConfig(sam_variant='sam2_tiny')\n"
            "print(sorted(m for m in sys.modules if m == 'sam2' or m.startswith('sam2.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]", out.stdout

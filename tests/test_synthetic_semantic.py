"""Synthetic ADE20K / Mapillary trees of shape scenes for the Tab. 6 pilot (evf_sam.data.synthetic_semantic
.make_synthetic_semantic): release layouts the readers take, exact labels, idempotent, never over real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evf_sam.data.semantic import ADE20K_CLASSES, build_semantic_reader
from evf_sam.data.synthetic_semantic import SEMANTIC_MANIFEST, make_synthetic_semantic

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_trees_read_back_with_shape_classes_and_every_pixel_labelled(tmp_path):
    out = make_synthetic_semantic(tmp_path, num_train=5, num_val=3, image_size=48)
    assert not out["reused"] and (tmp_path / SEMANTIC_MANIFEST).is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left
    ade = build_semantic_reader("ade20k", tmp_path, "training")
    assert len(ade) == 5 and len(build_semantic_reader("ade20k", tmp_path, "validation")) == 3
    seen = set()
    for i in range(len(ade)):
        raw = np.asarray(Image.open(ade.labels[i]))
        assert raw.min() >= 1  # no "other" pixel: stuff above and below the horizon, shapes on top
        label = ade.read_label(i)
        seen |= {ade.classes[c] for c in ade.present_classes(label)}
        image = ade.read_image(i).astype(int)
        assert image.shape[:2] == label.shape
        spread = image.max(-1) - image.min(-1)  # (H, W): 0 on the grey stuff, >= 140 in every palette colour
        for name in ("ball", "box", "tent", "sky", "floor"):
            m = label == ADE20K_CLASSES.index(name)
            if m.any():  # shapes painted in a palette colour, stuff grey (JPEG: approximately)
                assert (np.median(spread[m]) > 100) == (name in ("ball", "box", "tent")), name
    assert seen == {"sky", "floor", "ball", "box", "tent"}
    mp = build_semantic_reader("mapillary", tmp_path, "training")
    assert set(mp.classes) == {"sky", "road", "ball", "billboard", "traffic sign"} and len(mp) == 5
    assert out["classes"] == {"ade20k": sorted(seen), "mapillary": sorted(mp.classes)}


def test_idempotent_rebuilt_on_other_parameters_and_never_over_real_data(tmp_path):
    make_synthetic_semantic(tmp_path / "a", num_train=3, num_val=2, image_size=40)
    label = tmp_path / "a" / "ADEChallengeData2016" / "annotations" / "training" / "ADE_train_00000001.png"
    before = label.read_bytes()
    assert make_synthetic_semantic(tmp_path / "a", num_train=3, num_val=2, image_size=40)["reused"]
    again = make_synthetic_semantic(tmp_path / "a", num_train=4, num_val=2, image_size=40)
    assert not again["reused"] and len(list(label.parent.glob("*.png"))) == 4
    assert json.loads((tmp_path / "a" / SEMANTIC_MANIFEST).read_text())["params"]["num_train"] == 4
    # same seed and index: the same scene whatever the split sizes
    assert label.read_bytes() == before
    # a write interrupted while moving the trees into place (marker, no manifest) is rebuilt, not reused
    (tmp_path / "a" / SEMANTIC_MANIFEST).unlink()
    (tmp_path / "a" / "_SYNTHETIC_SEMANTIC_STARTED.json").write_text("{}")
    assert not make_synthetic_semantic(tmp_path / "a", num_train=4, num_val=2, image_size=40)["reused"]
    assert not (tmp_path / "a" / "_SYNTHETIC_SEMANTIC_STARTED.json").exists()
    # trees without either file are someone else's
    (tmp_path / "a" / SEMANTIC_MANIFEST).unlink()
    with pytest.raises(FileExistsError, match="not written by the synthetic generator"):
        make_synthetic_semantic(tmp_path / "a", num_train=4, num_val=2, image_size=40)
    real = tmp_path / "real" / "ADEChallengeData2016"
    real.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="use another data root"):
        make_synthetic_semantic(tmp_path / "real", num_train=2, num_val=1)
    assert list(real.iterdir()) == []


def test_prepare_data_generates_them_and_the_tokenizer_corpus_has_their_classes(tmp_path):
    from hydra import compose, initialize_config_dir

    import evf_sam.config  # noqa: F401
    from evf_sam.config import typed
    from evf_sam.data.build import prepare_data, tokenizer_corpus

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=pilot_table6", "extra_data=res", f"data.root={tmp_path}",
                                          "data.synthetic.num_train=2", "data.synthetic.num_val=1",
                                          "data.synthetic.num_test=2", "data.synthetic.image_size=40",
                                          "data.synthetic_semantic.num_train=2", "data.synthetic_semantic.num_val=1",
                                          "data.synthetic_semantic.image_size=40"])
    data = typed(cfg.data)
    prepare_data(data)  # the RES-only row too: its ADE20K val split is scored zero-shot
    assert (tmp_path / SEMANTIC_MANIFEST).is_file() and (tmp_path / "refer_seg" / "refcoco").is_dir()
    corpus = tokenizer_corpus(data)
    assert {"ball", "billboard", "traffic sign", "floor"} <= set(corpus)
    assert any("circle" in s for s in corpus)  # besides the referring sentences

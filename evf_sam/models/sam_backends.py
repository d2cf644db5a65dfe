"""Which promptable mask model EVF-SAM drives: SAM (segment-anything), EfficientSAM or SAM-2.

    sam = build_sam_backend("vit_h", checkpoint="sam_vit_h_4b8939.pth")      # a segment-anything Sam
    sam = build_sam_backend("efficient_sam_s", checkpoint="efficient_sam_vits.pt")
    sam = build_sam_backend("sam2_hiera_l", checkpoint="sam2_hiera_large.pt")
    sam_family("sam2_hiera_l")      # "sam2"
    resize_mode_of("sam2_hiera_l")  # "square"

The paper's Tab. 7 swaps the SAM under the same BEiT-3 prompt: SAM ViT-H/L/B (segment-anything,
the official EVF-SAM), EfficientSAM-S/-T (official "EVF-Effi-SAM", `models/efficient_sam.py`) and
SAM-2 Hiera-L/-T (official "EVF-SAM2", `models/sam2_backend.py`, on Meta's ``sam2`` package).

Every backend keeps its own official parameter names (so the official EVF-SAM checkpoints'
``visual_model.*`` tensors load unchanged) and has a module called ``image_encoder``, which EVF-SAM
keeps frozen. All three (`sam.SamBackend`, a segment-anything ``Sam`` subclass;
`efficient_sam.EfficientSam`; `sam2_backend.Sam2Backend`, a ``SAM2Base`` subclass) implement the
protocol below, and `EvfSam` only ever calls it:

    resize_mode: str                       # "pad" (SAM-1: zero padding) | "square" (EfficientSAM, SAM-2: stretched to S x S)
    image_size: int                        # S
    prompt_dim: int                        # C, the projector's output width
    image_embedding_size: tuple[int, int]  # (h, w)
    encode_image(images (B, 3, S, S)) -> features (a tensor, or a tuple of tensors for SAM-2)
    decode_text_prompts(features, prompts (N, 1, C), image_index (N,) | None, multimask_output)
        -> low-res logits (N, 1, h', w'), predicted IoU (N, 1)
    postprocess_masks(low_res, input_size, original_size) -> (N, 1, H, W) logits

Preprocessing (evf_sam/preprocess.py) follows the official code: "pad" (SAM-1) zero-pads the
resized image to S x S; "square" (EfficientSAM, SAM-2; hustvl/EVF-SAM ``model_type`` "effi" / "sam2")
stretches the image straight to S x S, as inference.py (predictor) or eval.py (evaluation, training).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

# Importing a family's module registers its builder and variants (models/registry.py), in the order
# of paper Tab. 7, which is the order of SAM_VARIANTS and of the names in error messages. None of
# them imports Meta's `sam2` before a SAM-2 model is built.
# isort: off
from evf_sam.models import sam  # noqa: F401
from evf_sam.models import efficient_sam  # noqa: F401
from evf_sam.models import sam2_backend  # noqa: F401
# isort: on
from evf_sam.models.registry import sam_family_of, sam_variant_names

__all__ = ["SAM_VARIANTS", "build_sam_backend", "resize_mode_of", "sam_family"]

SAM_VARIANTS: tuple[str, ...] = sam_variant_names()


def sam_family(variant: str) -> str:
    """"sam" | "efficient_sam" | "sam2"; ValueError naming the choices for an unknown variant."""
    return sam_family_of(variant).name


def resize_mode_of(variant: str) -> str:
    """The SAM-branch preprocessing of a variant: "pad" (SAM-1) or "square" (EfficientSAM, SAM-2)."""
    return sam_family_of(variant).resize_mode


def build_sam_backend(variant: str, checkpoint: str | Path | None = None) -> nn.Module:
    """Builds any registered variant in eval mode; ``checkpoint``: the family's official weight file,
    loaded strictly (segment-anything ``.pth``, EfficientSAM ``.pt``, SAM-2 ``.pt``)."""
    return sam_family_of(variant).build(variant, checkpoint)

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

    resize_mode: str                       # "pad" (SAM-1) | "square" (EfficientSAM, SAM-2)
    image_size: int                        # S
    prompt_dim: int                        # C, the projector's output width
    image_embedding_size: tuple[int, int]  # (h, w)
    encode_image(images (B, 3, S, S)) -> features (a tensor, or a tuple of tensors for SAM-2)
    decode_text_prompts(features, prompts (N, 1, C), image_index (N,) | None, multimask_output)
        -> low-res logits (N, 1, h', w'), predicted IoU (N, 1)
    postprocess_masks(low_res, input_size, original_size) -> (N, 1, H, W) logits

Preprocessing follows the official ``sam_preprocess``: "pad" (SAM-1) zero-pads the resized image
to S x S; "square" (EfficientSAM, SAM-2) bilinearly stretches the normalised resized image to
S x S (hustvl/EVF-SAM inference.py, ``model_type`` "effi" / "sam2").
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

__all__ = ["SAM_FAMILIES", "SAM_VARIANTS", "build_sam_backend", "resize_mode_of", "sam_family"]

# variant name -> family. Listed statically so that configs validate without importing sam2.
SAM_FAMILIES: dict[str, str] = {
    "vit_h": "sam", "vit_l": "sam", "vit_b": "sam", "tiny": "sam",
    "efficient_sam_s": "efficient_sam", "efficient_sam_t": "efficient_sam", "efficient_sam_tiny": "efficient_sam",
    "sam2_hiera_l": "sam2", "sam2_hiera_t": "sam2", "sam2_tiny": "sam2",
}
SAM_VARIANTS: tuple[str, ...] = tuple(SAM_FAMILIES)
_RESIZE_MODES = {"sam": "pad", "efficient_sam": "square", "sam2": "square"}


def sam_family(variant: str) -> str:
    """"sam" | "efficient_sam" | "sam2"; ValueError naming the choices for an unknown variant."""
    if variant not in SAM_FAMILIES:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {', '.join(SAM_VARIANTS)}")
    return SAM_FAMILIES[variant]


def resize_mode_of(variant: str) -> str:
    """The SAM-branch preprocessing of a variant: "pad" (SAM-1) or "square" (EfficientSAM, SAM-2)."""
    return _RESIZE_MODES[sam_family(variant)]


def build_sam_backend(variant: str, checkpoint: str | Path | None = None) -> nn.Module:
    """Builds any registered variant in eval mode; ``checkpoint``: the family's official weight file,
    loaded strictly (segment-anything ``.pth``, EfficientSAM ``.pt``, SAM-2 ``.pt``)."""
    family = sam_family(variant)
    if family == "sam":
        from evf_sam.models.sam import build_sam

        return build_sam(variant, checkpoint)
    if family == "efficient_sam":
        from evf_sam.models.efficient_sam import build_efficient_sam

        return build_efficient_sam(variant, checkpoint)
    from evf_sam.models.sam2_backend import build_sam2_backend

    return build_sam2_backend(variant, checkpoint)

"""SAM builders on segment-anything's own modules (``ImageEncoderViT``, ``PromptEncoder``,
``MaskDecoder``, ``TwoWayTransformer``, ``Sam``).

    sam = build_sam("vit_h", checkpoint="sam_vit_h_4b8939.pth")   # strict load, errors name the keys
    sam.image_encoder.img_size                                     # the SAM input size S (never hard-code 1024)

``vit_h`` / ``vit_l`` / ``vit_b`` are segment-anything's ``build_sam_vit_*`` architectures exactly
(the official EVF-SAM releases, BEiT-3-Large and -Base alike, use ``vit_h``). ``tiny`` uses the same
classes at toy sizes for tests and the quickstart: 256 px input, 16x16 image embeddings, prompt
dim 32, 64x64 low-res masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor, nn

__all__ = ["SAM_CONFIGS", "SAM_REGISTRY", "SamArch", "build_sam", "load_sam_state_dict", "sam_variant_of"]

PIXEL_MEAN = (123.675, 116.28, 103.53)  # on 0-255 values, as segment-anything
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArch:
    """Sizes of one SAM variant (segment-anything's `_build_sam` arguments)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024  # SAM input size S (padded square)
    patch_size: int = 16  # image embedding is S / patch_size on a side
    window_size: int = 14  # windowed attention in the non-global blocks
    prompt_embed_dim: int = 256  # C: image-embedding channels = prompt / decoder width
    mask_in_chans: int = 16  # prompt encoder's mask-downscaling width (unused by EVF-SAM, kept for names)
    decoder_depth: int = 2  # TwoWayTransformer layers
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


SAM_CONFIGS: dict[str, SamArch] = {
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    # Tests / quickstart: same classes and code path, toy sizes (16x16 embeddings, 64x64 low-res masks).
    "tiny": SamArch(
        encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,),
        image_size=256, window_size=8, prompt_embed_dim=32, mask_in_chans=16, decoder_depth=2,
        decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
    ),
}


def _build(arch: SamArch) -> Sam:
    emb = arch.image_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def build_sam_vit_h(checkpoint: str | Path | None = None) -> Sam:
    return build_sam("vit_h", checkpoint)


def build_sam_vit_l(checkpoint: str | Path | None = None) -> Sam:
    return build_sam("vit_l", checkpoint)


def build_sam_vit_b(checkpoint: str | Path | None = None) -> Sam:
    return build_sam("vit_b", checkpoint)


def build_sam_tiny(checkpoint: str | Path | None = None) -> Sam:
    return build_sam("tiny", checkpoint)


SAM_REGISTRY: dict[str, Callable[..., Sam]] = {
    "vit_h": build_sam_vit_h,
    "vit_l": build_sam_vit_l,
    "vit_b": build_sam_vit_b,
    "tiny": build_sam_tiny,
}


def build_sam(variant: str, checkpoint: str | Path | None = None) -> Sam:
    """Builds a SAM variant (``SAM_CONFIGS``); ``checkpoint``: a segment-anything ``.pth`` loaded strictly.

    The model is returned in eval mode, like segment-anything's builders.
    """
    if variant not in SAM_CONFIGS:
        raise ValueError(f"unknown SAM variant {variant!r}; choose one of {', '.join(SAM_CONFIGS)}")
    sam = _build(SAM_CONFIGS[variant])
    sam.eval()
    if checkpoint is not None:
        load_sam_state_dict(sam, checkpoint, what=f"SAM {variant} checkpoint {str(checkpoint)!r}")
    return sam


# Non-persistent buffers of `Sam`; some exports still carry them. They are constants, so skip them.
_SAM_CONSTANT_KEYS = ("pixel_mean", "pixel_std")


def load_sam_state_dict(sam: Sam, state_dict_or_path: Mapping[str, Tensor] | str | Path, *,
                        what: str = "SAM state dict") -> None:
    """Strictly loads segment-anything weights (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).

    Accepts a path to a segment-anything ``.pth`` (read with ``torch.load(weights_only=True)``) or a
    state dict; a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped. Missing keys,
    unexpected keys and shape mismatches raise `StateDictMismatchError` naming each of them, and
    nothing is copied in that case. Values are cast to the model's dtype.
    """
    from evf_sam.models.state_dict import load_weights_strict

    load_weights_strict(sam, state_dict_or_path, what=what, expected="a segment-anything .pth file",
                        skip=_SAM_CONSTANT_KEYS)


def sam_variant_of(image_encoder_embed_dim: int, depth: int | None = None) -> str | None:
    """The registered variant with this image-encoder width (and depth), or None."""
    for name, arch in SAM_CONFIGS.items():
        if arch.encoder_embed_dim == image_encoder_embed_dim and (depth is None or arch.encoder_depth == depth):
            return name
    return None

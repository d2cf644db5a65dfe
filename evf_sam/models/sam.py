"""SAM (segment-anything) as a SAM backend of EVF-SAM: the official EVF-SAM's mask model.

    sam = build_sam("vit_h", checkpoint="sam_vit_h_4b8939.pth")   # strict load, errors name the keys
    emb = sam.encode_image(images)                                 # (B, 3, S, S) -> (B, C, S/16, S/16)
    low_res, iou = sam.decode_text_prompts(emb, prompts, image_index, multimask_output=False)
    logits = sam.postprocess_masks(low_res, input_size, original_size)   # (N, 1, H, W)

`SamBackend` *is* segment-anything's ``Sam`` (a subclass built from segment-anything's own
``ImageEncoderViT``, ``PromptEncoder``, ``MaskDecoder``, ``TwoWayTransformer``), so its parameter
names are segment-anything's (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) and
segment-anything ``.pth`` files and the official checkpoints' ``visual_model.*`` tensors load
unchanged. It adds the backend protocol of `evf_sam.models.sam_backends`.

``vit_h`` / ``vit_l`` / ``vit_b`` are segment-anything's ``build_sam_vit_*`` architectures exactly
(the official EVF-SAM releases, BEiT-3-Large and -Base alike, use ``vit_h``). ``tiny`` uses the same
classes at toy sizes for tests and the quickstart: 256 px input, 16x16 image embeddings, prompt
dim 32, 64x64 low-res masks. The SAM input size is ``sam.image_size``; never hard-code 1024.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Mapping

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import Tensor, nn

from evf_sam.models.registry import register_sam_family
from evf_sam.models.sam_decoding import best_of_multimask, features_per_prompt
from evf_sam.models.state_dict import load_weights_strict

__all__ = ["SAM_CONFIGS", "SamArch", "SamBackend", "build_sam", "load_sam_state_dict", "sam_variant_of"]

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


# The "sam" family's variants (registered with `build_sam` below).
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


class SamBackend(Sam):
    """segment-anything's ``Sam`` with EVF-SAM's text-prompt interface (see `evf_sam.models.sam_backends`).

    The projected text feature is the one sparse prompt: SAM's prompt encoder with no points, boxes
    or masks gives an empty sparse embedding and ``no_mask_embed`` as the dense embedding, and the
    prompt is appended to the sparse embedding (hustvl/EVF-SAM ``model/evf_sam.py``). Decoding runs
    ``MaskDecoder.predict_masks``'s arithmetic for N prompts against their images without repeating
    each image embedding per prompt first.
    """

    resize_mode: str = "pad"  # ResizeLongestSide(S), then zero-padded to S x S (bottom / right)

    # -- sizes --------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        """S: the square SAM input (1024 for vit_*, 256 for tiny)."""
        return int(self.image_encoder.img_size)

    @property
    def prompt_dim(self) -> int:
        """C: image-embedding channels = prompt width (256 for vit_*, 32 for tiny)."""
        return int(self.prompt_encoder.embed_dim)

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        """(h, w) = (S/16, S/16); low-res masks are (4h, 4w)."""
        h, w = self.prompt_encoder.image_embedding_size
        return int(h), int(w)

    # -- the backend protocol -----------------------------------------------------------------

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) normalised + zero-padded -> (B, C, S/16, S/16); no autograd while the
        image encoder is frozen (EVF-SAM always freezes it)."""
        frozen = not any(p.requires_grad for p in self.image_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.image_encoder(images)

    def decode_text_prompts(self, image_embeddings: Tensor, prompts: Tensor, image_index: Tensor | None = None,
                            multimask_output: bool = False) -> tuple[Tensor, Tensor]:
        """SAM's mask decoder for N text prompts against their images, batched over prompts.

        Args:
            image_embeddings: (B, C, h, w)
            prompts: (N, 1, C) (or (N, C)), the projected text feature of each expression
            image_index: (N,) long in [0, B); None means N == B and prompt i goes with image i
            multimask_output: False: SAM's single-mask output (mask token 0). True: of SAM's 3
                multimask outputs, the one with the highest predicted IoU (official behaviour).
        Returns:
            low-res mask logits (N, 1, 4h, 4w), predicted IoU (N, 1)
        """
        if prompts.dim() == 2:
            prompts = prompts[:, None]
        _, c, h, w = image_embeddings.shape
        n = prompts.shape[0]
        pe_mod, dec = self.prompt_encoder, self.mask_decoder
        if (h, w) != tuple(pe_mod.image_embedding_size) or c != pe_mod.embed_dim:
            raise ValueError(f"image_embeddings must be (B, {pe_mod.embed_dim}, {pe_mod.image_embedding_size[0]}, "
                             f"{pe_mod.image_embedding_size[1]}), got {tuple(image_embeddings.shape)}")

        # SAM prompt encoder with no points / boxes / masks: empty sparse, dense = no_mask_embed.
        sparse = prompts.to(image_embeddings.dtype)  # (N, 1, C) = cat([empty (N, 0, C), prompt])
        dense = pe_mod.no_mask_embed.weight.reshape(1, -1, 1, 1).to(image_embeddings.dtype)  # (1, C, 1, 1)
        src = image_embeddings + dense  # (B, C, h, w): add once per image, then gather per prompt
        src, = features_per_prompt(image_index, n, src)  # (N, C, h, w)
        pos_src = pe_mod.get_dense_pe().to(src.dtype).expand(n, -1, -1, -1)  # (N, C, h, w) view

        # MaskDecoder.predict_masks, batched over prompts.
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)  # (1 + M, C)
        output_tokens = output_tokens.to(sparse.dtype).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)  # (N, 1 + M + 1, C)
        hs, src = dec.transformer(src, pos_src, tokens)  # (N, 1 + M + 1, C), (N, h*w, C)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:(1 + dec.num_mask_tokens), :]  # (N, M, C)
        src = src.transpose(1, 2).reshape(n, c, h, w)
        upscaled = dec.output_upscaling(src)  # (N, C/8, 4h, 4w)
        hyper_in = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                                for i in range(dec.num_mask_tokens)], dim=1)  # (N, M, C/8)
        _, cu, hu, wu = upscaled.shape
        masks = (hyper_in @ upscaled.view(n, cu, hu * wu)).view(n, -1, hu, wu)  # (N, M, 4h, 4w)
        iou_pred = dec.iou_prediction_head(iou_token_out)  # (N, M)

        if not multimask_output:
            return masks[:, 0:1], iou_pred[:, 0:1]
        return best_of_multimask(masks[:, 1:], iou_pred[:, 1:])  # of SAM's 3 multimask outputs

    # postprocess_masks(low_res, input_size, original_size) is Sam's own: bilinear to S x S, crop to
    # input_size (the resized image before padding), bilinear to original_size; align_corners=False.


def _build(arch: SamArch) -> SamBackend:
    emb = arch.image_size // arch.patch_size
    return SamBackend(
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


@register_sam_family("sam", resize_mode=SamBackend.resize_mode, variants=SAM_CONFIGS)
def build_sam(variant: str, checkpoint: str | Path | None = None) -> SamBackend:
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
    load_weights_strict(sam, state_dict_or_path, what=what, expected="a segment-anything .pth file",
                        skip=_SAM_CONSTANT_KEYS)


def sam_variant_of(image_encoder_embed_dim: int, depth: int | None = None) -> str | None:
    """The registered variant with this image-encoder width (and depth), or None."""
    for name, arch in SAM_CONFIGS.items():
        if arch.encoder_embed_dim == image_encoder_embed_dim and (depth is None or arch.encoder_depth == depth):
            return name
    return None

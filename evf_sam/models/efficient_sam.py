"""EfficientSAM (Xiong et al., arXiv 2312.00863) as a SAM backend of EVF-SAM ("EVF-Effi-SAM", paper Tab. 7).

    sam = build_efficient_sam("efficient_sam_s", checkpoint="efficient_sam_vits.pt")   # strict load
    emb = sam.encode_image(images)                                  # (B, 3, 1024, 1024) -> (B, 256, 64, 64)
    low_res, iou = sam.decode_text_prompts(emb, prompts, image_index, multimask_output=False)
    logits = sam.postprocess_masks(low_res, input_size, original_size)   # (N, 1, H, W)

Behaviour matched (module names, parameter shapes, arithmetic):

* yformer/EfficientSAM ``efficient_sam/``: ``build_efficient_sam.py`` (vits: width 384, 6 heads; vitt: 192, 3),
  ``efficient_sam.py`` (``build_efficient_sam``: 1024 px, patch 16, depth 12, MLP ratio 4, neck 256, decoder depth
  2 / MLP 2048 / 8 heads, upscaling widths (64, 32), 3 multimask outputs, IoU head 3 linear layers of width 256,
  GELU everywhere; the weight file is a torch pickle ``{"model": state_dict}`` loaded strictly),
  ``efficient_sam_encoder.py``, ``efficient_sam_decoder.py``, ``two_way_transformer.py``, ``mlp.py``.
* hustvl/EVF-SAM ``model/evf_effisam.py`` (``EvfEffiSamModel``, which vendors the files above as ``visual_model``):
  the projected [CLS] is the only sparse prompt (no points), the image embedding enters the decoder as is,
  ``multimask_output=False`` by default (True: the multimask output with the highest predicted IoU), and the
  low-res masks are resized bilinearly straight to the original image size (no crop: the image was stretched to
  S x S, not padded, so ``input_size`` is not used).

Differences from segment-anything that this module implements (and tests/test_efficient_sam.py checks):

* image encoder: a plain ViT (global attention in every block, no relative positions, LayerNorm eps 1e-6) with an
  absolute position table for the 224 px pre-training grid (14 x 14 + a [CLS] row), the [CLS] row dropped and the
  grid resized bicubically (align_corners=False) to S/16 x S/16 on every forward; neck as SAM's (1x1 conv, LN2d,
  3x3 conv, LN2d, no biases) with no final ViT norm;
* prompt encoder: random-Fourier positional encoding as SAM, learned embeddings for invalid points, points and the
  two box corners (``invalid_points``, ``point_embeddings``, ``bbox_{top_left,bottom_right}_embeddings``); no
  ``not_a_point_embed``, no mask downscaling and no ``no_mask_embed``, so no dense prompt is added to the image
  embedding;
* mask decoder: the two-way transformer's MLP and every MLP head use GELU (SAM: ReLU) and are named
  ``layers.{i}.0`` + ``fc``; the token self-attention of each two-way block is
  ``norm1(x' + attn(x', x', x'))`` with ``x' = x + query_pe`` except in the first block (``x' = x``), where SAM
  has ``norm1(x + attn(x + pe, x + pe, x))`` and, in the first block, ``norm1(attn(x, x, x))``; upscaling is
  ``final_output_upscaling_layers`` = [ConvT 2x2/2 -> GroupNorm(1, 64) -> GELU, ConvT 2x2/2 -> GELU] (SAM:
  LayerNorm2d, i.e. per pixel over channels; GroupNorm(1, C) normalises over all channels and pixels of a
  sample); hypernetwork MLPs C -> C -> C -> 32, IoU head C -> 256 -> 256 -> 4.

Low-res masks are (4h, 4w) = 256 x 256 for a 1024 input. Attention uses ``F.scaled_dot_product_attention``, which
is the official ``softmax(q k^T / sqrt(d)) v`` (equal up to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evf_sam.models.registry import register_sam_family
from evf_sam.models.sam_decoding import best_of_multimask, features_per_prompt
from evf_sam.models.state_dict import load_weights_strict

__all__ = [
    "EFFICIENT_SAM_CONFIGS",
    "OFFICIAL_SAM_SCALE",
    "EfficientSam",
    "EfficientSamArch",
    "build_efficient_sam",
    "efficient_sam_variant_of",
    "load_efficient_sam_state_dict",
]


@dataclass(frozen=True)
class EfficientSamArch:
    """Sizes of one EfficientSAM variant (yformer/EfficientSAM ``build_efficient_sam`` arguments)."""

    encoder_embed_dim: int  # ViT width ("encoder_patch_embed_dim")
    encoder_num_heads: int
    encoder_depth: int = 12
    image_size: int = 1024  # S: square input (the image is stretched to S x S, not padded)
    patch_size: int = 16  # image embedding is S / patch_size on a side
    pretrain_image_size: int = 224  # pos_embed rows: (pretrain_image_size / patch_size)^2 + 1 ([CLS])
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256  # C: neck width = prompt / decoder width ("encoder_neck_dims")
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    upscaling_dims: tuple[int, ...] = (64, 32)  # ConvTranspose2d widths; the last one is the hypernetwork output
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3  # linear layers in the IoU head (the official code passes depth - 1 hidden layers)
    iou_head_hidden_dim: int = 256


# The "efficient_sam" family's variants (registered with `build_efficient_sam`).
EFFICIENT_SAM_CONFIGS: dict[str, EfficientSamArch] = {
    "efficient_sam_s": EfficientSamArch(encoder_embed_dim=384, encoder_num_heads=6),  # efficient_sam_vits.pt
    "efficient_sam_t": EfficientSamArch(encoder_embed_dim=192, encoder_num_heads=3),  # efficient_sam_vitt.pt
    # Tests / CPU: same classes and code path at toy sizes (16x16 embeddings from a 14x14 position table, 64x64
    # low-res masks). Not the official "tiny" (= ViT-T, "efficient_sam_t").
    "efficient_sam_tiny": EfficientSamArch(
        encoder_embed_dim=64, encoder_num_heads=2, encoder_depth=2, image_size=256, prompt_embed_dim=32,
        decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=2, upscaling_dims=(8, 4), iou_head_hidden_dim=32,
    ),
}

# Official EVF-Effi-SAM config.json "sam_scale" (EvfEffiSamModel.initialize_evf_modules) -> our variant.
OFFICIAL_SAM_SCALE: dict[str, str] = {"small": "efficient_sam_s", "tiny": "efficient_sam_t"}


# ---------------------------------------------------------------------------------------------
# Shared pieces


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map (eps 1e-6), as SAM's."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)"""
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """``num_hidden`` x (Linear -> GELU) then a Linear ``fc`` (official ``mlp.MLPBlock``, names ``layers.{i}.0``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_hidden: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * num_hidden
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(dims[i], dims[i + 1]), nn.GELU())
                                    for i in range(num_hidden))
        self.fc = nn.Linear(hidden_dim, output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., input_dim) -> (..., output_dim)"""
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


# ---------------------------------------------------------------------------------------------
# Image encoder


class PatchEmbed(nn.Module):
    """Non-overlapping patch_size x patch_size convolution (``proj``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, D, S/p, S/p)"""
        return self.proj(x)


class ViTAttention(nn.Module):
    """Global multi-head self-attention with a fused ``qkv`` projection (scale head_dim^-0.5)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)"""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, N, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ViTMlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)"""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EfficientSamImageEncoder(nn.Module):
    """Plain ViT + neck (official ``ImageEncoderViT``): (B, 3, S, S) normalised -> (B, C, S/16, S/16)."""

    def __init__(self, arch: EfficientSamArch) -> None:
        super().__init__()
        self.img_size = arch.image_size
        self.patch_size = arch.patch_size
        self.image_embedding_size = arch.image_size // arch.patch_size
        d, c = arch.encoder_embed_dim, arch.prompt_embed_dim
        grid = arch.pretrain_image_size // arch.patch_size
        self.patch_embed = PatchEmbed(arch.patch_size, 3, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, d))  # row 0: [CLS] (unused)
        self.blocks = nn.ModuleList(ViTBlock(d, arch.encoder_num_heads, arch.mlp_ratio)
                                    for _ in range(arch.encoder_depth))
        self.neck = nn.Sequential(
            nn.Conv2d(d, c, kernel_size=1, bias=False),
            LayerNorm2d(c),
            nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(c),
        )

    def abs_pos(self, h: int, w: int) -> Tensor:
        """The position table without its [CLS] row, resized (bicubic, align_corners=False) to (1, h, w, D)."""
        table = self.pos_embed[:, 1:]
        g = math.isqrt(table.shape[1])
        grid = table.reshape(1, g, g, -1)
        if (g, g) == (h, w):
            return grid
        grid = F.interpolate(grid.permute(0, 3, 1, 2).float(), size=(h, w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).to(table.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, C, S/16, S/16)"""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"EfficientSAM expects ({self.img_size}, {self.img_size}) inputs, got {tuple(x.shape)}")
        x = self.patch_embed(x).permute(0, 2, 3, 1)  # (B, h, w, D)
        b, h, w, d = x.shape
        x = (x + self.abs_pos(h, w)).reshape(b, h * w, d)
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.reshape(b, h, w, d).permute(0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------
# Prompt encoder


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding (SAM's): [sin, cos](2 pi (2 xy - 1) G), G (2, C/2) ~ N(0, 1)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: Tensor) -> Tensor:
        """(..., 2) in [0, 1] -> (..., C), computed in float32."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.float()
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> Tensor:
        """(h, w) -> (C, h, w) float32 encoding of the pixel centres of an h x w grid."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return self._pe_encoding(torch.stack([x, y], dim=-1)).permute(2, 0, 1)


class EfficientSamPromptEncoder(nn.Module):
    """Official ``PromptEncoder``. EVF-SAM uses only ``get_dense_pe``; the point / box-corner embeddings are kept
    so that the official weights load (there is no mask input and no no-mask embedding)."""

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int]) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.invalid_points = nn.Embedding(1, embed_dim)
        self.point_embeddings = nn.Embedding(1, embed_dim)
        self.bbox_top_left_embeddings = nn.Embedding(1, embed_dim)
        self.bbox_bottom_right_embeddings = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """(1, C, h, w) float32 positional encoding of the image-embedding grid."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)


# ---------------------------------------------------------------------------------------------
# Mask decoder


class TokenAttention(nn.Module):
    """Attention with q/k/v projected to ``embedding_dim / downsample_rate`` (official
    ``AttentionForTwoWayAttentionBlock``, arithmetically SAM's ``Attention``)."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide {internal}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (B, Nq, C), k / v (B, Nk, C) -> (B, Nq, C)"""
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)))  # (B, heads, Nq, c)
        b, _, nq, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image, MLP (GELU), image -> tokens; post-norm.

    Differs from SAM's block in the self-attention step: EfficientSAM adds the query PE to the queries
    themselves (so it is in the values and the residual too) in every layer but the first, and the first
    layer keeps the residual (SAM: PE in q / k only; first layer without residual).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool) -> None:
        super().__init__()
        self.self_attn = TokenAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = TokenAttention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, dim, num_hidden=1)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = TokenAttention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries / query_pe (N, T, C), keys (N, hw, C), key_pe (N or 1, hw, C) -> (queries, keys)"""
        if not self.skip_first_layer_pe:  # official: the PE joins the queries themselves (values and residual)
            queries = queries + query_pe
        queries = self.norm1(queries + self.self_attn(queries, queries, queries))
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer with a GELU MLP (official ``two_way_transformer.TwoWayTransformer``)."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, i == 0)
                                    for i in range(depth))
        self.final_attn_token_to_image = TokenAttention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """image_embedding (N, C, h, w), image_pe (N or 1, C, h, w), point_embedding (N, T, C)
        -> tokens (N, T, C), image (N, hw, C)"""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        attn = self.final_attn_token_to_image(queries + point_embedding, keys + key_pe, keys)
        return self.norm_final_attn(queries + attn), keys


class EfficientSamMaskDecoder(nn.Module):
    """Official ``MaskDecoder``: output tokens + sparse prompts through the two-way transformer, GroupNorm/GELU
    upscaling x4, hypernetwork MLPs per mask token, IoU head."""

    def __init__(self, arch: EfficientSamArch) -> None:
        super().__init__()
        c = arch.prompt_embed_dim
        self.transformer_dim = c
        self.transformer = TwoWayTransformer(arch.decoder_depth, c, arch.decoder_num_heads, arch.decoder_mlp_dim)
        self.num_multimask_outputs = arch.num_multimask_outputs
        self.num_mask_tokens = arch.num_multimask_outputs + 1 if arch.num_multimask_outputs > 1 else 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        layers, width = [], c
        for i, out in enumerate(arch.upscaling_dims):
            last = i == len(arch.upscaling_dims) - 1
            layers.append(nn.Sequential(nn.ConvTranspose2d(width, out, kernel_size=2, stride=2),
                                        nn.Identity() if last else nn.GroupNorm(1, out), nn.GELU()))
            width = out
        self.final_output_upscaling_layers = nn.ModuleList(layers)
        self.output_hypernetworks_mlps = nn.ModuleList(MLPBlock(c, c, width, num_hidden=2)
                                                       for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLPBlock(c, arch.iou_head_hidden_dim, self.num_mask_tokens,
                                            num_hidden=arch.iou_head_depth - 1)

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """All mask tokens' outputs.

        image_embeddings (N, C, h, w) (one per prompt; an expanded view is fine), image_pe (1 or N, C, h, w),
        sparse_prompt_embeddings (N, T, C) -> masks (N, M, 4h, 4w), IoU (N, M); M = 1 + num_multimask_outputs,
        mask 0 is the single-mask output.
        """
        n, c, h, w = image_embeddings.shape
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat([tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings], dim=1)  # (N, 1+M+T, C)
        hs, src = self.transformer(image_embeddings, image_pe, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens]  # (N, M, C)
        up = src.transpose(1, 2).reshape(n, c, h, w)
        for layer in self.final_output_upscaling_layers:
            up = layer(up)  # -> (N, C', 4h, 4w)
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)  # (N, M, C')
        _, cu, hu, wu = up.shape
        masks = (hyper_in @ up.reshape(n, cu, hu * wu)).reshape(n, -1, hu, wu)
        return masks, self.iou_prediction_head(iou_token_out)


# ---------------------------------------------------------------------------------------------
# The backend


class EfficientSam(nn.Module):
    """EfficientSAM with the SAM-backend interface of `EvfSam` (state-dict names = the official files').

    Attributes:
        image_encoder: `EfficientSamImageEncoder` (frozen by the trainer under this name)
        prompt_encoder: `EfficientSamPromptEncoder`
        mask_decoder: `EfficientSamMaskDecoder`
        arch: `EfficientSamArch`
    """

    resize_mode: str = "square"  # the image stretched to S x S, no padding (preprocess.py, pipeline=...)
    mask_threshold: float = 0.0

    def __init__(self, arch: EfficientSamArch) -> None:
        super().__init__()
        self.arch = arch
        emb = arch.image_size // arch.patch_size
        self.image_encoder = EfficientSamImageEncoder(arch)
        self.prompt_encoder = EfficientSamPromptEncoder(arch.prompt_embed_dim, (emb, emb),
                                                        (arch.image_size, arch.image_size))
        self.mask_decoder = EfficientSamMaskDecoder(arch)

    def _apply(self, fn, recurse: bool = True):
        """Dtype/device moves keep the (2, C/2) positional-encoding matrix in float32 (the PE is computed in float32
        and cast to the embeddings' dtype in `decode_text_prompts`, so no arithmetic changes)."""
        super()._apply(fn, recurse)
        pe = self.prompt_encoder.pe_layer
        pe.positional_encoding_gaussian_matrix = pe.positional_encoding_gaussian_matrix.float()
        return self

    # -- sizes --------------------------------------------------------------------------------

    @property
    def image_size(self) -> int:
        """S: the square input side (1024; 256 for efficient_sam_tiny)."""
        return int(self.image_encoder.img_size)

    @property
    def prompt_dim(self) -> int:
        """C: image-embedding channels = prompt width (256; 32 for efficient_sam_tiny)."""
        return int(self.prompt_encoder.embed_dim)

    @property
    def image_embedding_size(self) -> tuple[int, int]:
        """(h, w) = (S/16, S/16); low-res masks are (4h, 4w)."""
        h, w = self.prompt_encoder.image_embedding_size
        return int(h), int(w)

    # -- the backend protocol -----------------------------------------------------------------

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) normalised (SAM mean / std, stretched, not padded) -> (B, C, h, w)"""
        return self.image_encoder(images)

    def decode_text_prompts(self, image_embeddings: Tensor, prompts: Tensor, image_index: Tensor | None = None,
                            multimask_output: bool = False) -> tuple[Tensor, Tensor]:
        """EfficientSAM's mask decoder with one sparse prompt per expression, batched over prompts.

        Args:
            image_embeddings: (B, C, h, w)
            prompts: (N, 1, C) (or (N, C)) projected text features, the only sparse prompt (no points / boxes);
                the image embedding gets no dense prompt (EfficientSAM has none)
            image_index: (N,) long in [0, B); None means N == B and prompt i goes with image i
            multimask_output: False (EVF-Effi-SAM's default): the single-mask output (mask token 0).
                True: of the 3 multimask outputs, the one with the highest predicted IoU.
        Returns:
            low-res mask logits (N, 1, 4h, 4w), predicted IoU (N, 1)
        """
        if prompts.dim() == 2:
            prompts = prompts[:, None]
        _, c, h, w = image_embeddings.shape
        if (h, w) != self.image_embedding_size or c != self.prompt_dim:
            eh, ew = self.image_embedding_size
            raise ValueError(f"image_embeddings must be (B, {self.prompt_dim}, {eh}, {ew}), "
                             f"got {tuple(image_embeddings.shape)}")
        if prompts.dim() != 3 or prompts.shape[-1] != c:
            raise ValueError(f"prompts must be (N, 1, {c}), got {tuple(prompts.shape)}")
        src, = features_per_prompt(image_index, prompts.shape[0], image_embeddings)  # (N, C, h, w)
        pos = self.prompt_encoder.get_dense_pe().to(src.dtype)  # (1, C, h, w), broadcast over prompts
        masks, iou = self.mask_decoder.predict_masks(src, pos, prompts.to(src.dtype))  # (N, M, 4h, 4w), (N, M)
        if not multimask_output or self.mask_decoder.num_multimask_outputs <= 1:
            return masks[:, :1], iou[:, :1]
        return best_of_multimask(masks[:, 1:], iou[:, 1:])

    def postprocess_masks(self, low_res: Tensor, input_size: tuple[int, int], original_size: tuple[int, int]) -> Tensor:
        """Official EVF-Effi-SAM post-processing: bilinear (align_corners=False) from (4h, 4w) straight to
        ``original_size``. ``input_size`` is unused: the input was stretched to S x S, not padded, so there
        is nothing to crop.

        low_res: (N, 1, 4h, 4w) -> (N, 1, H, W) logits (mask = logits > 0), in low_res's dtype
        """
        del input_size
        if low_res.dim() != 4:
            raise ValueError(f"low_res must be (N, 1, h, w), got {tuple(low_res.shape)}")
        size = (int(original_size[0]), int(original_size[1]))
        return F.interpolate(low_res.float(), size=size, mode="bilinear", align_corners=False).to(low_res.dtype)


# ---------------------------------------------------------------------------------------------
# Building and loading


@register_sam_family("efficient_sam", resize_mode=EfficientSam.resize_mode, variants=EFFICIENT_SAM_CONFIGS)
def build_efficient_sam(variant: str, checkpoint: str | Path | None = None) -> EfficientSam:
    """Builds an EfficientSAM variant (``EFFICIENT_SAM_CONFIGS``), in eval mode; ``checkpoint``: an official
    ``efficient_sam_vit{s,t}.pt`` (``{"model": state_dict}``) loaded strictly."""
    if variant not in EFFICIENT_SAM_CONFIGS:
        raise ValueError(f"unknown EfficientSAM variant {variant!r}; choose one of {', '.join(EFFICIENT_SAM_CONFIGS)}")
    model = EfficientSam(EFFICIENT_SAM_CONFIGS[variant]).eval()
    if checkpoint is not None:
        load_efficient_sam_state_dict(model, checkpoint, what=f"EfficientSAM {variant} checkpoint {str(checkpoint)!r}")
    return model


# Non-persistent buffers of the official model (ImageNet mean / std); an export may still carry them.
_CONSTANT_KEYS = ("pixel_mean", "pixel_std")


def load_efficient_sam_state_dict(model: EfficientSam, path_or_state_dict: Mapping[str, Tensor] | str | Path, *,
                                  what: str = "EfficientSAM state dict") -> None:
    """Strictly loads EfficientSAM weights (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``).

    Accepts a path to an official ``.pt`` (read with ``torch.load(weights_only=True)``) or a state dict; a
    ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped. Missing keys, unexpected keys and shape
    mismatches raise `StateDictMismatchError` naming each of them, and nothing is copied in that case. Values are
    cast to the model's dtype (a model built on the meta device adopts the given tensors instead).
    """
    on_meta = any(p.is_meta for p in model.parameters())
    load_weights_strict(model, path_or_state_dict, what=what, skip=_CONSTANT_KEYS, assign=on_meta,
                        expected="an EfficientSAM .pt file ({'model': state_dict})")
    if on_meta:
        model._apply(lambda t: t)  # re-applies the float32 PE-matrix rule to the adopted buffer


def efficient_sam_variant_of(image_encoder_embed_dim: int, depth: int | None = None) -> str | None:
    """The registered variant with this image-encoder width (and depth), or None."""
    for name, arch in EFFICIENT_SAM_CONFIGS.items():
        if arch.encoder_embed_dim == image_encoder_embed_dim and (depth is None or arch.encoder_depth == depth):
            return name
    return None

"""BEiT-3: the multiway transformer that fuses the referring text with the image early.

Our own implementation of torchscale's ``BEiT3`` (Microsoft torchscale 0.3.0:
``torchscale/model/BEiT3.py``, ``architecture/encoder.py``, ``component/multiway_network.py``,
``component/multihead_attention.py``, ``component/embedding.py``,
``component/feedforward_network.py``), configured as the official BEiT-3 repository does it
(``beit3/modeling_utils.py: _get_base_config / _get_large_config``: ``multiway=True``,
``subln=True``, ``normalize_output=True``, ``no_output_layer=True``, ``layernorm_embedding=False``,
``no_scale_embedding=True``, GELU, ``layernorm_eps=1e-5``). The behaviour reproduced here:

* Embeddings: text ids -> ``text_embed``; image -> 16x16 patch conv, [CLS] prepended. Vision
  tokens come first. Positions follow fairseq and start at 2 in *both* tables, so the vision table
  has ``num_patches + 1 + 2`` rows and the text table ``max_text_positions`` rows, of which
  ``max_text_positions - 2`` are usable (:attr:`BEiT3.max_text_len`). Padded text embeddings are
  zeroed before the first layer (torchscale's ``Encoder.forward`` does the same).
* Multiway: every LayerNorm/Linear/FFN/position table exists twice, ``A`` (vision expert) for the
  first ``multiway_split_position`` tokens and ``B`` (language expert) for the rest.
* Sub-LN ("Magneto") layers::

      x = x + out_proj(inner_attn_ln(attn(q_proj, k_proj, v_proj of self_attn_layer_norm(x))))
      x = x + fc2(ffn_layernorm(gelu(fc1(final_layer_norm(x)))))

  and a final multiway ``encoder.layer_norm``. Attention scaling is ``head_dim ** -0.5`` on q.

Differences from torchscale (deliberate): attention runs through
``F.scaled_dot_product_attention`` with the key padding mask always honoured; a query row that
has no key to attend to (e.g. a fully padded prompt) attends to itself instead of producing NaN;
``fused_layers`` (EVF-SAM's fusion-depth ablation) restricts cross-modal attention to the first K
layers; no dropout/drop-path/MIM masking (unused by EVF-SAM).

Parameter names are torchscale's verbatim so that a BEiT-3 state dict (after stripping
``beit3.``) loads with ``strict=True``; see :func:`load_beit3_state_dict`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from evf_sam.models.state_dict import read_state_dict

__all__ = [
    "BEIT3_CONFIGS",
    "BEiT3",
    "BEiT3Config",
    "BEiT3LoadError",
    "BEiT3LoadResult",
    "BEiT3Output",
    "build_beit3",
    "load_beit3_state_dict",
    "save_beit3_state_dict",
]

logger = logging.getLogger(__name__)

# fairseq convention kept by torchscale: position ids start at 2 (0 and 1 are never used).
POSITION_OFFSET = 2


@dataclass
class BEiT3Config:
    """Architecture of a BEiT-3 multiway encoder (defaults: BEiT-3-Large at 224 px)."""

    embed_dim: int = 1024  # token width D
    depth: int = 24  # number of encoder layers
    num_heads: int = 16  # attention heads (head dim = embed_dim // num_heads)
    ffn_dim: int = 4096  # hidden width of each FFN expert
    img_size: int = 224  # square input image side, pixels
    patch_size: int = 16  # square patch side, pixels
    in_chans: int = 3  # image channels
    vocab_size: int = 64010  # text embedding rows (BEiT-3 sentencepiece vocabulary)
    max_text_positions: int = 1024  # text position table rows (usable length: this - 2)
    layernorm_eps: float = 1e-5  # eps of every LayerNorm (torchscale default)
    fused_layers: int | None = None  # cross-modal attention only in the first K layers; None = all
    grad_checkpointing: bool = False  # recompute each layer in backward (saves activation memory)

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}"
            )
        if self.img_size % self.patch_size != 0:
            raise ValueError(
                f"img_size={self.img_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.max_text_positions <= POSITION_OFFSET:
            raise ValueError(
                f"max_text_positions={self.max_text_positions} leaves no usable text position "
                f"(positions start at {POSITION_OFFSET})"
            )
        if self.fused_layers is not None and not 0 <= self.fused_layers <= self.depth:
            raise ValueError(
                f"fused_layers={self.fused_layers} must be None or in [0, depth={self.depth}]"
            )

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


BEIT3_CONFIGS: dict[str, BEiT3Config] = {
    "beit3_large": BEiT3Config(embed_dim=1024, depth=24, num_heads=16, ffn_dim=4096),
    "beit3_base": BEiT3Config(embed_dim=768, depth=12, num_heads=12, ffn_dim=3072),
    # Tests and the quickstart: same code path, toy sizes.
    "beit3_tiny": BEiT3Config(
        embed_dim=64, depth=2, num_heads=4, ffn_dim=128, img_size=32, vocab_size=1000,
        max_text_positions=66,
    ),
}


def build_beit3(name: str, **overrides: Any) -> "BEiT3":
    """Build a registered BEiT-3 variant; ``overrides`` replace :class:`BEiT3Config` fields."""
    if name not in BEIT3_CONFIGS:
        raise ValueError(f"unknown BEiT-3 variant {name!r}; known: {sorted(BEIT3_CONFIGS)}")
    return BEiT3(replace(BEIT3_CONFIGS[name], **overrides))


@dataclass
class BEiT3Output:
    hidden: Tensor  # (B, N, D): vision tokens first ([CLS] at 0) then text tokens
    padding_mask: Tensor | None  # (B, N) bool, True = pad; None when nothing can be padded
    multiway_split_position: int  # number of vision tokens (0 for text-only, N for image-only)


# --------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------


class Multiway(nn.Module):
    """Two copies of a token-wise module: ``A`` for tokens ``[:split]``, ``B`` for ``[split:]``.

    Mirrors torchscale's ``MultiwayNetwork``, but the split is an argument, not module state.
    """

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.A = a
        self.B = b

    def forward(self, x: Tensor, split: int) -> Tensor:
        """(B, N, *) -> (B, N, *'), token dimension 1."""
        n = x.shape[1]
        if split >= n:
            return self.A(x)
        if split <= 0:
            return self.B(x)
        return torch.cat([self.A(x[:, :split]), self.B(x[:, split:])], dim=1)


class FeedForward(nn.Module):
    """Sub-LN FFN expert: fc1 -> GELU (computed in fp32) -> ffn_layernorm -> fc2."""

    def __init__(self, embed_dim: int, ffn_dim: int, eps: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        h = self.fc1(x)
        h = F.gelu(h.float()).type_as(h)
        return self.fc2(self.ffn_layernorm(h))


def _multiway_linear(dim: int) -> Multiway:
    return Multiway(nn.Linear(dim, dim), nn.Linear(dim, dim))


def _multiway_ln(dim: int, eps: float) -> Multiway:
    return Multiway(nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps))


class MultiwaySelfAttention(nn.Module):
    """Multi-head self-attention with multiway q/k/v/out projections and a sub-LN."""

    def __init__(self, embed_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.k_proj = _multiway_linear(embed_dim)
        self.v_proj = _multiway_linear(embed_dim)
        self.q_proj = _multiway_linear(embed_dim)
        self.out_proj = _multiway_linear(embed_dim)
        self.inner_attn_ln = _multiway_ln(embed_dim, eps)

    def forward(self, x: Tensor, split: int, attn_mask: Tensor | None) -> Tensor:
        """x (B, N, D), attn_mask (B, 1, N, N) bool True = may attend, or None -> (B, N, D)."""
        bsz, n, dim = x.shape
        # (B, N, D) -> (B, nh, N, hs)
        q = self.q_proj(x, split).view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x, split).view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x, split).view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
        # torchscale scales q before q @ k^T; SDPA applies the same factor.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scaling)
        out = out.transpose(1, 2).reshape(bsz, n, dim)  # (B, nh, N, hs) -> (B, N, D)
        return self.out_proj(self.inner_attn_ln(out, split), split)


class EncoderLayer(nn.Module):
    """One pre-norm sub-LN multiway transformer layer (torchscale ``EncoderLayer``)."""

    def __init__(self, cfg: BEiT3Config) -> None:
        super().__init__()
        d, eps = cfg.embed_dim, cfg.layernorm_eps
        self.self_attn = MultiwaySelfAttention(d, cfg.num_heads, eps)
        self.self_attn_layer_norm = _multiway_ln(d, eps)
        self.ffn = Multiway(FeedForward(d, cfg.ffn_dim, eps), FeedForward(d, cfg.ffn_dim, eps))
        self.final_layer_norm = _multiway_ln(d, eps)

    def forward(self, x: Tensor, split: int, attn_mask: Tensor | None) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = x + self.self_attn(self.self_attn_layer_norm(x, split), split, attn_mask)
        return x + self.ffn(self.final_layer_norm(x, split), split)


class Encoder(nn.Module):
    """Holds the multiway position tables, the layers and the final multiway LayerNorm.

    A plain container so that parameter names match torchscale's ``encoder.*``.
    """

    def __init__(self, cfg: BEiT3Config) -> None:
        super().__init__()
        self.embed_positions = Multiway(
            nn.Embedding(cfg.num_patches + 1 + POSITION_OFFSET, cfg.embed_dim),  # vision (A)
            nn.Embedding(cfg.max_text_positions, cfg.embed_dim),  # text (B)
        )
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.depth))
        self.layer_norm = _multiway_ln(cfg.embed_dim, cfg.layernorm_eps)


class VisionEmbedding(nn.Module):
    """16x16 patch conv + [CLS] (+ an unused MIM mask token kept for state-dict compatibility)."""

    def __init__(self, cfg: BEiT3Config) -> None:
        super().__init__()
        self.img_size = cfg.img_size
        self.proj = nn.Conv2d(
            cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    def forward(self, image: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 1 + H/p * W/p, D)."""
        if image.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"BEiT-3 expects {self.img_size}x{self.img_size} images, got "
                f"{tuple(image.shape[-2:])}"
            )
        x = self.proj(image).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


class BEiT3(nn.Module):
    """BEiT-3 multiway encoder over vision tokens, text tokens, or both (early fusion)."""

    def __init__(self, config: BEiT3Config) -> None:
        super().__init__()
        self.config = config
        self.grad_checkpointing = config.grad_checkpointing
        self.text_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.vision_embed = VisionEmbedding(config)
        self.encoder = Encoder(config)
        self.reset_parameters()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def max_text_len(self) -> int:
        """Longest text (in tokens, incl. <s> and </s>) the position table allows."""
        return self.config.max_text_positions - POSITION_OFFSET

    @property
    def num_vision_tokens(self) -> int:
        return self.config.num_patches + 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random init in the spirit of torchscale (only used when no checkpoint is loaded):
        PyTorch defaults for Linear/Conv/LayerNorm, N(0, D^-1/2) token embeddings, zero [CLS]
        and mask tokens, and sub-LN's sqrt(log 2L) gain on fc1, fc2, out_proj and v_proj."""
        nn.init.normal_(self.text_embed.weight, mean=0.0, std=self.config.embed_dim**-0.5)
        gain = math.sqrt(math.log(2 * self.config.depth)) if self.config.depth > 0 else 1.0
        for name, p in self.encoder.layers.named_parameters():
            if any(s in name for s in ("fc1", "fc2", "out_proj", "v_proj")):
                p.mul_(gain)

    @staticmethod
    def _attention_mask(
        padding_mask: Tensor | None, split: int, n: int, fused: bool, device: torch.device
    ) -> Tensor | None:
        """Boolean (B or 1, 1, N, N) mask, True = may attend; None = attend everywhere.

        ``fused=False`` makes it block-diagonal: vision tokens ``[:split]`` see only vision
        tokens, text tokens only text tokens (EVF-SAM's fusion-depth ablation).
        """
        block = not fused and 0 < split < n
        if padding_mask is None and not block:
            return None
        allowed = torch.ones(1, 1, n, n, dtype=torch.bool, device=device)
        if padding_mask is not None:
            allowed = allowed & ~padding_mask[:, None, None, :]  # (B, 1, 1, N) keys
        if block:
            is_text = torch.arange(n, device=device) >= split
            allowed = allowed & (is_text[:, None] == is_text[None, :])  # block diagonal
        # A query with no key to attend to (fully padded prompt, or a text block whose tokens
        # are all pads) would give NaN; let it attend to itself instead (its output is padding).
        eye = torch.eye(n, dtype=torch.bool, device=device)
        return allowed | (eye & ~allowed.any(dim=-1, keepdim=True))

    def forward(
        self,
        *,
        text_ids: Tensor | None = None,
        text_padding_mask: Tensor | None = None,
        image: Tensor | None = None,
    ) -> BEiT3Output:
        """Encode text, image, or both.

        Args:
            text_ids: (B, T) long token ids, T <= :attr:`max_text_len`.
            text_padding_mask: (B, T) bool, True = pad; None = no padding.
            image: (B, 3, H, W) float, normalised with mean = std = 0.5, H = W = img_size.

        Returns:
            :class:`BEiT3Output` with ``hidden`` (B, N, D), N = vision tokens + T, vision first.
        """
        if text_ids is None and image is None:
            raise ValueError("BEiT3.forward needs text_ids, image, or both")
        if text_ids is None and text_padding_mask is not None:
            raise ValueError("text_padding_mask given without text_ids")

        parts: list[Tensor] = []
        masks: list[Tensor] = []
        split = 0
        if image is not None:
            x_img = self.vision_embed(image)  # (B, Nv, D)
            split = x_img.shape[1]
            pos = torch.arange(POSITION_OFFSET, POSITION_OFFSET + split, device=image.device)
            parts.append(x_img + self.encoder.embed_positions.A(pos))
        if text_ids is not None:
            t = text_ids.shape[1]
            if t > self.max_text_len:
                raise ValueError(
                    f"text of {t} tokens exceeds max_text_len={self.max_text_len}; truncate it"
                )
            pos = torch.arange(POSITION_OFFSET, POSITION_OFFSET + t, device=text_ids.device)
            x_txt = self.text_embed(text_ids) + self.encoder.embed_positions.B(pos)
            if text_padding_mask is not None:
                if text_padding_mask.shape != text_ids.shape:
                    raise ValueError(
                        f"text_padding_mask {tuple(text_padding_mask.shape)} != text_ids "
                        f"{tuple(text_ids.shape)}"
                    )
                text_padding_mask = text_padding_mask.to(torch.bool)
                x_txt = x_txt.masked_fill(text_padding_mask[..., None], 0.0)
                if image is not None:
                    masks.append(x_img.new_zeros(x_img.shape[:2], dtype=torch.bool))
                masks.append(text_padding_mask)
            parts.append(x_txt)
        if image is not None and text_ids is not None and image.shape[0] != text_ids.shape[0]:
            raise ValueError(
                f"batch mismatch: image {image.shape[0]} vs text_ids {text_ids.shape[0]}"
            )

        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]  # (B, N, D)
        n = x.shape[1]
        if text_ids is None:
            split = n  # image only: every token is a vision token
        padding_mask = torch.cat(masks, dim=1) if masks else None  # (B, N)

        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        masks_by_kind: dict[bool, Tensor | None] = {}  # at most two: fused / block-diagonal
        for i, layer in enumerate(self.encoder.layers):
            fused = self.config.fused_layers is None or i < self.config.fused_layers
            if fused not in masks_by_kind:
                masks_by_kind[fused] = self._attention_mask(padding_mask, split, n, fused, x.device)
            attn_mask = masks_by_kind[fused]
            if use_ckpt:
                x = checkpoint(layer, x, split, attn_mask, use_reentrant=False)
            else:
                x = layer(x, split, attn_mask)
        x = self.encoder.layer_norm(x, split)
        return BEiT3Output(hidden=x, padding_mask=padding_mask, multiway_split_position=split)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


class BEiT3LoadError(RuntimeError):
    """Strict load failure; ``missing``, ``unexpected`` and ``mismatched`` name the keys."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = ["BEiT-3 state dict does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        for name, ckpt_shape, model_shape in mismatched:
            lines.append(
                f"  shape mismatch {name}: checkpoint {ckpt_shape} vs model {model_shape}"
            )
        super().__init__("\n".join(lines))


@dataclass
class BEiT3LoadResult:
    loaded: list[str]  # model keys that were filled
    ignored: list[str] = field(default_factory=list)  # checkpoint keys outside ``beit3.*``


def save_beit3_state_dict(model: BEiT3, path: str | Path, *, prefix: str = "beit3.") -> Path:
    """Writes ``model``'s weights in the official BEiT-3 ``.pth`` layout that `load_beit3_state_dict` reads
    (``{"model": {"beit3.<torchscale name>": tensor}}``), atomically: never a half-written file.

    ``model`` may be a subclass (e.g. the prompt encoder adapter); only `BEiT3`'s own state is written.
    """
    import io

    from evf_sam.atomic import atomic_write_bytes

    state = {f"{prefix}{k}": v.detach().clone() for k, v in BEiT3.state_dict(model).items()}
    buf = io.BytesIO()
    torch.save({"model": state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_beit3_state_dict(
    model: BEiT3, state_dict_or_path: Mapping[str, Tensor] | str | Path, *, prefix: str = "beit3."
) -> BEiT3LoadResult:
    """Strictly load BEiT-3 weights into ``model``.

    Accepts a path to the official BEiT-3 ``.pth`` (a pickle ``{"model": state_dict}``; read with
    ``torch.load(weights_only=True)``, so a file holding arbitrary objects is refused, never
    unpickled), a dict ``{"model": ...}`` / ``{"module": ...}``, a ``beit3.``-prefixed state dict,
    or a bare state dict with torchscale names.

    If any key starts with ``prefix``, only those keys are the BEiT-3 weights; every other key
    (the official pretrain file's ``mim_head.*`` / ``mlm_head.*`` heads, fine-tuning heads) is
    ignored deliberately and returned in ``result.ignored`` (and logged). Without the prefix,
    every key must belong to the model. Missing keys, unexpected keys and shape mismatches raise
    :class:`BEiT3LoadError` naming each of them; nothing is copied in that case.
    """
    obj = read_state_dict(state_dict_or_path, wrappers=("model", "module"), what="BEiT-3 checkpoint",
                          expected="a BEiT-3 .pth with the state dict under 'model', keys 'beit3.*'")

    ignored: list[str] = []
    if any(k.startswith(prefix) for k in obj):
        state: dict[str, Tensor] = {}
        for k, v in obj.items():
            if k.startswith(prefix):
                state[k[len(prefix):]] = v
            else:
                ignored.append(k)
        if ignored:
            logger.info("BEiT-3 load: ignoring %d non-%s keys: %s", len(ignored), prefix,
                        ", ".join(ignored))
    else:
        state = dict(obj)

    own = model.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    mismatched = [
        (k, tuple(state[k].shape), tuple(own[k].shape))
        for k in sorted(own)
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise BEiT3LoadError(missing, unexpected, mismatched)
    model.load_state_dict(state, strict=True)
    return BEiT3LoadResult(loaded=sorted(state), ignored=ignored)

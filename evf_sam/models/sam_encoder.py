"""A fast SAM image encoder: segment-anything's ``ImageEncoderViT`` (ViTDet backbone with windowed and
global blocks, decomposed relative positions, conv neck), same parameter names and shapes, run through
``F.scaled_dot_product_attention`` and optionally in mixed precision or compiled.

    enc = FastImageEncoderViT.from_reference(sam.image_encoder)        # shares the weights
    enc = FastImageEncoderViT.from_reference(sam.image_encoder, compute_dtype=torch.bfloat16)
    use_fast_sam_encoder(model, compute_dtype=torch.bfloat16)         # swaps it into an EvfSam / Sam in place
    emb = enc(images)                                                  # (B, 3, S, S) -> (B, C, S/16, S/16)

Behaviour matched: facebookresearch/segment-anything ``segment_anything/modeling/image_encoder.py``
(``ImageEncoderViT``, ``Block``, ``Attention``, ``window_partition`` / ``window_unpartition``,
``add_decomposed_rel_pos``; ``get_rel_pos`` is imported from there). A segment-anything state dict
(``patch_embed.proj.*``, ``pos_embed``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,
attn.rel_pos_w,norm2,mlp.lin1,mlp.lin2}.*``, ``neck.{0,1,2,3}.*``) loads strictly, and in float32 the
embedding equals the reference within 1e-4 (tests/test_sam_encoder.py).

What differs from the reference, and why:

* Attention runs through ``F.scaled_dot_product_attention``; the decomposed relative-position term
  ``rel_h[i, kh(j)] + rel_w[i, kw(j)]`` (``add_decomposed_rel_pos``, from the unscaled q, in float32)
  enters it in one of two ways (``Attention.rel_pos_impl``):
  "bias": as the float ``attn_mask`` (B, heads, N, N). PyTorch 2.14 runs the fused flash kernel with a
  float bias on CPU (``_scaled_dot_product_flash_attention_for_cpu``, fp32 and bf16; the MATH fallback is
  3-10x slower), and the memory-efficient or cuDNN kernel on CUDA (FlashAttention-2 takes no bias).
  "fold": folded into the q . k product by widening the heads (q' = [q, q.Rh/scale, q.Rw/scale],
  k' = [k, one-hot key row, one-hot key column], v zero-padded; width hd + h + w rounded up to 16), so no
  N x N tensor exists and any kernel runs, FlashAttention-2 included (width 112 in windows, 208 in SAM-H's
  global blocks, <= 256). "auto" (default): fold for 16-bit inputs, bias for fp32. Measured on this
  2-core AMX CPU (1 thread, SAM-H block, bf16 mixed): global block 0.82 s folded vs 2.51 s with the
  bias (segment-anything in plain bf16: 2.65 s); windowed block 0.47 s vs 0.51 s (reference bf16 0.50 s).
  In fp32 the bias is the faster of the two in windows. `sdpa_backend_report` says which kernels take
  a float bias on a given device / dtype.
* Windowed blocks: zero padding of the normed tokens (padded tokens are keys, as in the reference),
  the qkv projection on the padded grid, then ONE copy that partitions q, k and v into windows and
  heads at once (the reference copies twice: window partition, then the head split); after attention
  one copy undoes the partition and the output projection runs on the unpadded tokens only (the
  reference projects the padded ones too and crops afterwards).
* ``compute_dtype`` (mixed precision, e.g. ``torch.bfloat16``): the four linear layers of every block
  (``qkv``, ``proj``, ``lin1``, ``lin2``) and the attention run in that dtype (bf16 GEMMs accumulate
  in fp32 on oneDNN/AMX and cuBLAS; SDPA's softmax is fp32 inside the kernel); the residual stream,
  the LayerNorms, the relative-position terms (rounded once to the compute dtype as attention input),
  the absolute position table, the patch embedding and the neck stay in float32 (or the parameters'
  dtype when that is wider). ``cast_linears_`` stores the linear weights in the compute dtype so that
  no per-call cast is needed. ``compute_dtype=None`` computes in the parameters' dtype throughout,
  like the reference.
* ``compile_blocks()``: ``torch.compile`` of each block (windowed and global blocks compile to two
  graphs that all blocks share), opt-in.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import ImageEncoderViT, get_rel_pos
from torch import Tensor, nn

__all__ = ["FastImageEncoderViT", "rel_pos_bias", "sdpa_backend_report", "use_fast_sam_encoder",
           "use_reference_sam_encoder"]

_LINEARS = ("attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2")  # what `compute_dtype` runs in low precision


def _linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer(x)`` in x's dtype (the weights are cast when they are stored in another dtype)."""
    w, b = layer.weight, layer.bias
    if w.dtype != x.dtype:
        w = w.to(x.dtype)
        b = None if b is None else b.to(x.dtype)
    return F.linear(x, w, b)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype kept for the residual stream, norms and position terms: float32 unless wider."""
    return dtype if dtype == torch.float64 else torch.float32


def rel_pos_bias(q: Tensor, rel_pos_h: Tensor, rel_pos_w: Tensor, q_size: tuple[int, int],
                 k_size: tuple[int, int], dtype: torch.dtype | None = None) -> Tensor:
    """segment-anything's ``add_decomposed_rel_pos`` term as an additive attention bias.

    q: (B, nh, qh*qw, hd) (unscaled), rel_pos_h (2*max(qh, kh) - 1, hd), rel_pos_w likewise
    -> (B, nh, qh*qw, kh*kw): ``bias[b, n, (i, j), (k, l)] = q . Rh[i, k] + q . Rw[j, l]``, computed in
    float32 (float64 for float64 inputs) and rounded once to ``dtype`` (default q's dtype).
    """
    qh, qw = q_size
    kh, kw = k_size
    b, nh, _, hd = q.shape
    wide = _wide(q.dtype)
    r_h = get_rel_pos(qh, kh, rel_pos_h.to(wide))  # (qh, kh, hd)
    r_w = get_rel_pos(qw, kw, rel_pos_w.to(wide))  # (qw, kw, hd)
    r_q = q.to(wide).reshape(b, nh, qh, qw, hd)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h)  # (B, nh, qh, qw, kh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w)  # (B, nh, qh, qw, kw)
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, nh, qh * qw, kh * kw)
    return bias.to(dtype or q.dtype)


def _key_one_hots(h: int, w: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(h*w, width): row j = [one_hot(j // w, h), one_hot(j % w, w), 0...]: the keys' extra columns in `Attention._attend_folded`."""
    j = torch.arange(h * w, device=device)
    out = torch.zeros(h * w, width, dtype=dtype, device=device)
    out[j, j // w] = 1
    out[j, h + j % w] = 1
    return out


class PatchEmbed(nn.Module):
    """Image to patch embedding (``proj``: a patch_size-strided conv), as segment-anything's."""

    def __init__(self, kernel_size: tuple[int, int] = (16, 16), stride: tuple[int, int] = (16, 16),
                 padding: tuple[int, int] = (0, 0), in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) -> (B, S/p, S/p, D)"""
        return self.proj(x.to(self.proj.weight.dtype)).permute(0, 2, 3, 1)


class MLPBlock(nn.Module):
    """lin1 -> act -> lin2 (segment-anything's ``common.MLPBlock``), in the input's dtype."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)"""
        return _linear(self.act(_linear(x, self.lin1)), self.lin2)


class Attention(nn.Module):
    """Multi-head self-attention with decomposed relative positions, through SDPA.

    Parameters as segment-anything's ``Attention``: ``qkv``, ``proj``, ``rel_pos_h`` (2*H - 1, hd),
    ``rel_pos_w`` (2*W - 1, hd) where (H, W) is the window (or, in global blocks, the token grid).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, use_rel_pos: bool = False,
                 rel_pos_zero_init: bool = True, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size must be given when use_rel_pos=True (it sizes the relative tables)")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.rel_pos_impl = "auto"  # "bias" | "fold" | "auto", see `attend`

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v (*batch, nh, h, w, hd), any strides -> (prod(batch), nh, h*w, hd), in q's dtype.

        The relative-position term enters SDPA either as its float bias (``rel_pos_impl`` "bias") or
        folded into the q . k product ("fold": q' = [q, q.Rh / scale, q.Rw / scale, 0], k' = [k,
        one_hot(key row), one_hot(key column), 0], v' = [v, 0], so ``q' . k' * scale`` is the reference's
        ``(q * scale) . k + rel_h + rel_w`` and no (h*w)^2 bias is built; head width hd + h + w rounded
        up to a multiple of 16). "auto": fold for 16-bit inputs (3x faster than the bias in SAM-H's
        global blocks on CPU, and FlashAttention-2, which takes no bias, can run on CUDA), bias otherwise.
        """
        *_, nh, h, w, hd = q.shape
        if not self.use_rel_pos:
            q, k, v = (t.reshape(-1, nh, h * w, hd) for t in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        impl = self.rel_pos_impl
        if impl not in ("auto", "bias", "fold"):
            raise ValueError(f"rel_pos_impl must be 'auto', 'bias' or 'fold', got {impl!r}")
        if impl == "auto":
            impl = "fold" if q.dtype in (torch.bfloat16, torch.float16) else "bias"
        if impl == "fold":
            return self._attend_folded(q, k, v)
        q, k, v = (t.reshape(-1, nh, h * w, hd) for t in (q, k, v))
        bias = rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)

    def _attend_folded(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """`attend` with the relative positions folded into widened heads (see there)."""
        *batch, nh, h, w, hd = q.shape
        n, d = h * w, hd + h + w
        width = -(-d // 16) * 16
        wide = _wide(q.dtype)
        # the reference adds q . R (unscaled q) after scaling q . k: divide R by the scale, in float32
        r_h = get_rel_pos(h, h, self.rel_pos_h.to(wide)) / self.scale  # (h, h, hd)
        r_w = get_rel_pos(w, w, self.rel_pos_w.to(wide)) / self.scale  # (w, w, hd)
        qa = q.new_empty(*batch, nh, h, w, width)  # written in place: the copies below are the only ones
        qa[..., :hd] = q
        r_q = qa[..., :hd].to(wide)
        qa[..., hd:hd + h] = torch.einsum("...hwc,hkc->...hwk", r_q, r_h)
        qa[..., hd + h:d] = torch.einsum("...hwc,wkc->...hwk", r_q, r_w)
        qa[..., d:] = 0
        ka = k.new_empty(*batch, nh, h, w, width)
        ka[..., :hd] = k
        ka[..., hd:] = _key_one_hots(h, w, width - hd, k.dtype, k.device).view(h, w, width - hd)
        va = v.new_zeros(*batch, nh, h, w, width)
        va[..., :hd] = v
        qa, ka, va = (t.view(-1, nh, n, width) for t in (qa, ka, va))
        return F.scaled_dot_product_attention(qa, ka, va, scale=self.scale)[..., :hd]

    def forward(self, x: Tensor) -> Tensor:
        """Global attention: (B, H, W, D) -> (B, H, W, D), in x's dtype."""
        b, h, w, d = x.shape
        qkv = _linear(x, self.qkv).view(b, h, w, 3, self.num_heads, -1).permute(3, 0, 4, 1, 2, 5)  # (3, B, nh, H, W, hd)
        out = self.attend(qkv[0], qkv[1], qkv[2])  # (B, nh, N, hd)
        return _linear(out.transpose(1, 2).reshape(b, h, w, d), self.proj)


class Block(nn.Module):
    """Pre-norm ViT block with windowed (``window_size > 0``) or global attention.

    ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``; the residual stream stays in the wide dtype,
    the attention and MLP run in ``compute_dtype`` (None: the parameters' dtype).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_layer: type[nn.Module] = nn.LayerNorm, act_layer: type[nn.Module] = nn.GELU,
                 use_rel_pos: bool = False, rel_pos_zero_init: bool = True, window_size: int = 0,
                 input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
                              rel_pos_zero_init=rel_pos_zero_init,
                              input_size=input_size if window_size == 0 else (window_size, window_size))
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(embedding_dim=dim, mlp_dim=int(dim * mlp_ratio), act=act_layer)
        self.window_size = window_size
        self.compute_dtype: torch.dtype | None = None

    def _norm(self, norm: nn.Module, x: Tensor) -> Tensor:
        if norm.weight.dtype != x.dtype:  # a low-precision model: normalise in the wide dtype anyway
            return F.layer_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps)
        return norm(x)

    def _windowed_attention(self, x: Tensor) -> Tensor:
        """(B, H, W, D) normed tokens -> (B, H, W, D) attention output over ws x ws windows."""
        attn, ws = self.attn, self.window_size
        b, h, w, d = x.shape
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_h or pad_w:  # zero tokens, as window_partition: they are keys/values of the edge windows
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        nh_, nw_ = hp // ws, wp // ws
        heads, hd = attn.num_heads, d // attn.num_heads
        qkv = _linear(x, attn.qkv)  # (B, Hp, Wp, 3D)
        # A view (B, nH, ws, nW, ws, 3, heads, hd) -> (3, B, nH, nW, heads, ws, ws, hd); `attend` copies it
        # into windows x heads once (the reference copies twice: window partition, then the head split).
        qkv = qkv.view(b, nh_, ws, nw_, ws, 3, heads, hd).permute(5, 0, 1, 3, 6, 2, 4, 7)
        out = attn.attend(qkv[0], qkv[1], qkv[2])  # (B*nH*nW, heads, ws*ws, hd)
        # One copy back: (B, nH, nW, heads, ws, ws, hd) -> (B, nH, ws, nW, ws, heads, hd), unpadded
        out = out.view(b, nh_, nw_, heads, ws, ws, hd).permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, d)
        if pad_h or pad_w:
            out = out[:, :h, :w]
        return _linear(out, attn.proj)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, D) -> (B, H, W, D), in x's dtype."""
        cd = self.compute_dtype or x.dtype
        y = self._norm(self.norm1, x).to(cd)
        y = self._windowed_attention(y) if self.window_size > 0 else self.attn(y)
        x = x + y
        return x + self.mlp(self._norm(self.norm2, x).to(cd))


class FastImageEncoderViT(nn.Module):
    """segment-anything's ``ImageEncoderViT`` with the same constructor arguments, module tree and
    parameter names, computed as described in the module docstring.

    Args (as ``ImageEncoderViT``): img_size, patch_size, in_chans, embed_dim, depth, num_heads,
        mlp_ratio, out_chans, qkv_bias, norm_layer, act_layer, use_abs_pos, use_rel_pos,
        rel_pos_zero_init, window_size, global_attn_indexes; and
        compute_dtype: dtype of the blocks' linear layers and attention (e.g. ``torch.bfloat16``);
            None = the parameters' dtype everywhere (the reference's arithmetic).
    """

    def __init__(self, img_size: int = 1024, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256,
                 qkv_bias: bool = True, norm_layer: type[nn.Module] = nn.LayerNorm,
                 act_layer: type[nn.Module] = nn.GELU, use_abs_pos: bool = True, use_rel_pos: bool = False,
                 rel_pos_zero_init: bool = True, window_size: int = 0, global_attn_indexes: tuple[int, ...] = (),
                 *, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(kernel_size=(patch_size, patch_size), stride=(patch_size, patch_size),
                                      in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=norm_layer,
                  act_layer=act_layer, use_rel_pos=use_rel_pos, rel_pos_zero_init=rel_pos_zero_init,
                  window_size=window_size if i not in global_attn_indexes else 0, input_size=(grid, grid))
            for i in range(depth))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.set_compute_dtype(compute_dtype)

    # -- precision and compilation ---------------------------------------------------------------

    @property
    def compute_dtype(self) -> torch.dtype | None:
        return self._compute_dtype

    def set_compute_dtype(self, dtype: torch.dtype | None) -> "FastImageEncoderViT":
        """Runs the blocks' linear layers and attention in ``dtype`` (None: the parameters' dtype).

        The weights are not touched (call `cast_linears_` to store them in ``dtype`` as well)."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"compute_dtype must be a floating dtype or None, got {dtype}")
        self._compute_dtype = dtype
        for blk in self.blocks:
            blk.compute_dtype = dtype
        return self

    def low_precision_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """(name, parameter) of the blocks' linear layers: what `compute_dtype` computes with."""
        for name, p in self.named_parameters():
            if any(f".{lin}." in f".{name}" for lin in _LINEARS):
                yield name, p

    def cast_linears_(self, dtype: torch.dtype | None = None) -> "FastImageEncoderViT":
        """Stores the blocks' linear weights in ``dtype`` (default ``compute_dtype``), in place: half the
        memory and no per-call cast. Norms, position tables, patch embedding and neck keep their dtype."""
        dtype = dtype or self.compute_dtype
        if dtype is None:
            raise ValueError("cast_linears_ needs a dtype (or set compute_dtype first)")
        for _, p in self.low_precision_parameters():
            p.data = p.data.to(dtype)
        return self

    def compile_blocks(self, **kwargs) -> "FastImageEncoderViT":
        """``torch.compile`` each block in place (``nn.Module.compile``; names and state dict unchanged).

        All windowed blocks share one compiled graph and all global blocks another (the blocks'
        parameters are graph inputs). kwargs go to ``torch.compile`` (e.g. ``mode="max-autotune"``).
        """
        kwargs.setdefault("dynamic", False)
        for blk in self.blocks:
            blk.compile(**kwargs)
        return self

    # -- forward ----------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) normalised (+ padded) images -> (B, out_chans, S/p, S/p) in x's dtype."""
        out_dtype = x.dtype
        x = self.patch_embed(x)  # (B, h, w, D)
        wide = _wide(x.dtype)
        x = x.to(wide)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(wide)
        for blk in self.blocks:
            x = blk(x)  # (B, h, w, D) in the wide dtype
        x = x.permute(0, 3, 1, 2)  # (B, D, h, w)
        conv1, ln1, conv2, ln2 = self.neck
        x = conv1(x.to(conv1.weight.dtype))
        x = _layer_norm_2d(ln1, x.to(wide))
        x = conv2(x.to(conv2.weight.dtype))
        x = _layer_norm_2d(ln2, x.to(wide))
        return x.to(out_dtype)

    # -- conversion -------------------------------------------------------------------------------

    @classmethod
    def from_reference(cls, encoder: "ImageEncoderViT | FastImageEncoderViT", *, share: bool = True,
                       compute_dtype: torch.dtype | None = None) -> "FastImageEncoderViT":
        """A fast encoder with ``encoder``'s architecture and weights (``encoder``: segment-anything's, or
        another `FastImageEncoderViT`, e.g. for a second compute dtype over the same weights).

        share=True: the new module holds the very same Parameter objects (no copy; ``encoder`` and the
        result stay in sync); False: copies. ``requires_grad`` and the training flag are kept.
        """
        if not isinstance(encoder, (ImageEncoderViT, FastImageEncoderViT)):
            raise TypeError(f"from_reference expects segment_anything's ImageEncoderViT, got {type(encoder).__name__}")
        kw = _reference_kwargs(encoder)
        with torch.device("meta"):
            fast = cls(**kw)
        state = encoder.state_dict(keep_vars=True)
        for name, p in fast.named_parameters():  # assign=True copies these flags onto the adopted parameters
            p.requires_grad_(state[name].requires_grad)
        if not share:
            state = {k: nn.Parameter(v.detach().clone(), requires_grad=v.requires_grad) if isinstance(v, nn.Parameter)
                     else v.detach().clone() for k, v in state.items()}
        fast.load_state_dict(state, strict=True, assign=True)  # raises naming any missing / unexpected key
        fast.set_compute_dtype(compute_dtype)
        fast.train(encoder.training)
        return fast


def _layer_norm_2d(ln: LayerNorm2d, x: Tensor) -> Tensor:
    """segment-anything's ``LayerNorm2d`` (per pixel, over channels) in x's dtype: (B, C, H, W)."""
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + ln.eps)
    return ln.weight.to(x.dtype)[:, None, None] * x + ln.bias.to(x.dtype)[:, None, None]


def _reference_kwargs(encoder: ImageEncoderViT) -> dict:
    """The ``ImageEncoderViT`` constructor arguments that built ``encoder`` (read off the module)."""
    blk0 = encoder.blocks[0]
    attn = blk0.attn
    conv = encoder.patch_embed.proj
    embed_dim = conv.out_channels
    if tuple(conv.kernel_size) != tuple(conv.stride) or tuple(conv.padding) != (0, 0):
        raise ValueError("FastImageEncoderViT supports the non-overlapping patch embedding of ImageEncoderViT only")
    windows = [b.window_size for b in encoder.blocks]
    window_size = max(windows)
    norm = blk0.norm1
    if type(norm) is not nn.LayerNorm:
        raise ValueError(f"norm_layer {type(norm).__name__} is not supported (segment-anything uses nn.LayerNorm)")
    return dict(
        img_size=encoder.img_size,
        patch_size=conv.kernel_size[0],
        in_chans=conv.in_channels,
        embed_dim=embed_dim,
        depth=len(encoder.blocks),
        num_heads=attn.num_heads,
        mlp_ratio=blk0.mlp.lin1.out_features / embed_dim,
        out_chans=encoder.neck[0].out_channels,
        qkv_bias=attn.qkv.bias is not None,
        norm_layer=partial(nn.LayerNorm, eps=norm.eps),
        act_layer=type(blk0.mlp.act),
        use_abs_pos=encoder.pos_embed is not None,
        use_rel_pos=attn.use_rel_pos,
        window_size=window_size,
        global_attn_indexes=tuple(i for i, w in enumerate(windows) if w == 0),
    )


def use_fast_sam_encoder(model: nn.Module, *, compute_dtype: torch.dtype | None = None,
                         cast_weights: bool = True, compile: bool = False) -> FastImageEncoderViT:
    """Replaces the segment-anything image encoder of ``model`` (an `EvfSam` or a segment-anything
    ``Sam``) with a `FastImageEncoderViT` sharing its weights, in place, and returns it.

    compute_dtype: e.g. ``torch.bfloat16`` for mixed precision (see the module docstring); None keeps
        the parameters' dtype (equal to the reference within float rounding).
    cast_weights: with a compute_dtype, store the blocks' linear weights in it (`cast_linears_`).
    compile: ``torch.compile`` the blocks (`FastImageEncoderViT.compile_blocks`).

    The state dict keeps its names (``sam.image_encoder.*`` / ``image_encoder.*``).
    """
    sam = getattr(model, "sam", model)
    enc = getattr(sam, "image_encoder", None)
    if isinstance(enc, FastImageEncoderViT):
        fast = enc.set_compute_dtype(compute_dtype)
    elif isinstance(enc, ImageEncoderViT):
        fast = FastImageEncoderViT.from_reference(enc, share=True, compute_dtype=compute_dtype)
        sam.image_encoder = fast
    else:
        raise TypeError(f"use_fast_sam_encoder needs a segment-anything SAM (ImageEncoderViT); this model's image "
                        f"encoder is {type(enc).__name__} (EfficientSAM and SAM-2 already attend through SDPA)")
    if compute_dtype is not None and cast_weights:
        fast.cast_linears_(compute_dtype)
    if compile:
        fast.compile_blocks()
    return fast


def use_reference_sam_encoder(model: nn.Module) -> ImageEncoderViT:
    """The inverse of `use_fast_sam_encoder`: segment-anything's ``ImageEncoderViT`` sharing the weights of
    ``model``'s `FastImageEncoderViT` (an `EvfSam` or a ``Sam``), swapped in place and returned (e.g. to
    run the official arithmetic, as benchmarks/bench_sam.py does). A reference encoder is returned as is."""
    sam = getattr(model, "sam", model)
    enc = getattr(sam, "image_encoder", None)
    if isinstance(enc, ImageEncoderViT):
        return enc
    if not isinstance(enc, FastImageEncoderViT):
        raise TypeError(f"use_reference_sam_encoder needs a segment-anything SAM; this model's image encoder is "
                        f"{type(enc).__name__}")
    with torch.device("meta"):
        ref = ImageEncoderViT(**_reference_kwargs(enc))
    state = enc.state_dict(keep_vars=True)
    for name, p in ref.named_parameters():
        p.requires_grad_(state[name].requires_grad)
    ref.load_state_dict(state, strict=True, assign=True)
    ref.train(enc.training)
    sam.image_encoder = ref
    return ref


def sdpa_backend_report(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                        n: int = 196, head_dim: int = 80, heads: int = 2) -> dict[str, bool]:
    """Which SDPA kernels accept a (B, heads, n, n) float bias of ``dtype`` on ``device``:
    ``{"FLASH_ATTENTION": bool, "EFFICIENT_ATTENTION": ..., "CUDNN_ATTENTION": ..., "MATH": ...}``,
    each tried alone (a kernel that refuses the inputs reports False)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    device = torch.device(device)
    q, k, v = (torch.randn(1, heads, n, head_dim, device=device, dtype=dtype) for _ in range(3))
    bias = torch.randn(1, heads, n, n, device=device, dtype=dtype)
    report = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.MATH):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            report[backend.name] = True
        except RuntimeError:
            report[backend.name] = False
    return report

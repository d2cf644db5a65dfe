"""FastImageEncoderViT against segment-anything's ImageEncoderViT (same weights, same inputs)."""

from __future__ import annotations

import copy
from functools import partial

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Block as RefBlock
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from evf_sam.models.sam_encoder import (
    Block,
    FastImageEncoderViT,
    rel_pos_bias,
    sdpa_backend_report,
    use_fast_sam_encoder,
    use_reference_sam_encoder,
)


def _reference(img_size: int, patch: int, dim: int, depth: int, heads: int, window: int,
               global_idx: tuple[int, ...], out_chans: int = 16, seed: int = 0) -> ImageEncoderViT:
    """segment-anything's encoder with random weights, position tables included (zero-initialised there)."""
    torch.manual_seed(seed)
    enc = ImageEncoderViT(img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
                          mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
                          global_attn_indexes=global_idx, window_size=window, out_chans=out_chans).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "pos" in name:
                p.normal_(0.0, 0.5)
    return enc


# (img_size, patch, dim, depth, heads, window, global blocks): grid a multiple of the window or not (padding),
# windowed + global, all windowed, all global.
CASES = {
    "grid16_win8": (256, 16, 64, 2, 2, 8, (1,)),
    "grid14_win5_pad": (224, 16, 64, 3, 2, 5, (1,)),
    "grid16_win7_pad_all_windowed": (128, 8, 32, 2, 4, 7, ()),
    "grid10_all_global": (160, 16, 48, 2, 4, 4, (0, 1)),
}


def _set_rel_pos_impl(enc: FastImageEncoderViT, impl: str) -> FastImageEncoderViT:
    for blk in enc.blocks:
        blk.attn.rel_pos_impl = impl
    return enc


@pytest.mark.parametrize("impl", ["bias", "fold"])
@pytest.mark.parametrize("case", list(CASES))
def test_fp32_equals_reference(case, impl):
    ref = _reference(*CASES[case])
    fast = _set_rel_pos_impl(FastImageEncoderViT.from_reference(ref, share=False), impl)
    x = torch.randn(2, 3, ref.img_size, ref.img_size)
    with torch.no_grad():
        want, got = ref(x), fast(x)
    assert got.shape == want.shape == (2, 16, ref.img_size // CASES[case][1], ref.img_size // CASES[case][1])
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("window,grid", [(14, 64), (0, 32)], ids=["windowed_64x64", "global_32x32"])
def test_real_size_block_equals_reference(window, grid):
    """SAM-H blocks (width 1280, 16 heads): a windowed one at the real 64 x 64 tokens (14 x 14 windows pad the
    grid to 70 x 70) and a global one at 32 x 32 tokens (the reference's 16 x 4096^2 fp32 attention matrix
    alone takes tens of seconds on 2 shared cores)."""
    torch.manual_seed(0)
    kw = dict(dim=1280, num_heads=16, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
              act_layer=nn.GELU, use_rel_pos=True, rel_pos_zero_init=True, window_size=window, input_size=(grid, grid))
    ref = RefBlock(**kw).eval()
    with torch.no_grad():
        ref.attn.rel_pos_h.normal_(0, 0.1)
        ref.attn.rel_pos_w.normal_(0, 0.1)
    fast = Block(**kw).eval()
    fast.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, grid, grid, 1280)
    with torch.inference_mode():
        want = ref(x)
        for impl in ("bias", "fold"):
            fast.attn.rel_pos_impl = impl
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # the fused kernel runs, with the bias too
                got = fast(x)
            assert (got - want).abs().max().item() <= 1e-4, impl


def test_rel_pos_bias_is_the_decomposed_term():
    """bias == add_decomposed_rel_pos(0, ...), incl. a table that get_rel_pos has to resize."""
    torch.manual_seed(0)
    b, heads, h, w, hd = 2, 3, 5, 7, 8
    q = torch.randn(b, heads, h * w, hd)
    rel_h, rel_w = torch.randn(2 * h - 1, hd), torch.randn(11, hd)  # 11 != 2 * 7 - 1: interpolated
    want = add_decomposed_rel_pos(torch.zeros(b * heads, h * w, h * w), q.reshape(b * heads, h * w, hd),
                                  rel_h, rel_w, (h, w), (h, w))
    got = rel_pos_bias(q, rel_h, rel_w, (h, w), (h, w))
    assert got.shape == (b, heads, h * w, h * w)
    torch.testing.assert_close(got.reshape(b * heads, h * w, h * w), want, rtol=1e-5, atol=1e-5)
    # low precision: formed in float32, rounded once
    got16 = rel_pos_bias(q.bfloat16(), rel_h, rel_w, (h, w), (h, w))
    want16 = rel_pos_bias(q.bfloat16().float(), rel_h, rel_w, (h, w), (h, w)).bfloat16()
    assert got16.dtype == torch.bfloat16 and torch.equal(got16, want16)


def test_official_state_dict_loads_strictly_and_names_match():
    ref = _reference(*CASES["grid14_win5_pad"])
    state = ref.state_dict()
    fast = FastImageEncoderViT(img_size=224, patch_size=16, embed_dim=64, depth=3, num_heads=2, mlp_ratio=4,
                               out_chans=16, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                               window_size=5, global_attn_indexes=(1,))
    assert {k: tuple(v.shape) for k, v in fast.state_dict().items()} == {k: tuple(v.shape) for k, v in state.items()}
    fast.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (fast(x) - ref(x)).abs().max().item() <= 1e-4
    with pytest.raises(RuntimeError, match="rel_pos_h"):
        fast.load_state_dict({k: v for k, v in state.items() if not k.endswith("blocks.1.attn.rel_pos_h")})


def test_from_reference_shares_or_copies():
    ref = _reference(*CASES["grid16_win8"])
    ref.blocks[0].requires_grad_(False)
    shared = FastImageEncoderViT.from_reference(ref)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), shared.named_parameters()):
        assert n1 == n2 and p1 is p2
    assert [p.requires_grad for p in ref.parameters()] == [not n.startswith("blocks.0.") for n, _ in
                                                          ref.named_parameters()]  # flags untouched
    copied = FastImageEncoderViT.from_reference(ref, share=False)
    for (_, p1), (_, p2) in zip(ref.named_parameters(), copied.named_parameters()):
        assert p1.data_ptr() != p2.data_ptr() and torch.equal(p1, p2) and p1.requires_grad == p2.requires_grad
    assert not copied.training
    with pytest.raises(TypeError, match="ImageEncoderViT"):
        FastImageEncoderViT.from_reference(nn.Linear(2, 2))


def test_cpu_sdpa_runs_the_fused_kernel_with_a_float_bias():
    """What the module docstring claims for CPU: flash attention accepts the relative-position bias."""
    for dtype in (torch.float32, torch.bfloat16):
        report = sdpa_backend_report("cpu", dtype, n=16, head_dim=8)
        assert report["FLASH_ATTENTION"] and report["MATH"], (dtype, report)
        assert not report["EFFICIENT_ATTENTION"] and not report["CUDNN_ATTENTION"]  # CUDA-only kernels


@pytest.mark.parametrize("impl", ["auto", "bias"])
def test_bf16_mixed_precision_tolerance(impl):
    """bf16 GEMMs / attention with fp32 residual, norms and position terms: the embedding stays within 2%
    (relative L2; measured 0.2-0.3% on these toys, folded or as a bias), the linear weights are stored in
    bf16, everything else fp32."""
    for case in ("grid16_win8", "grid14_win5_pad"):
        ref = _reference(*CASES[case])
        fast = FastImageEncoderViT.from_reference(ref, share=False, compute_dtype=torch.bfloat16).cast_linears_()
        _set_rel_pos_impl(fast, impl)
        x = torch.randn(2, 3, ref.img_size, ref.img_size)
        with torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            want, got = ref(x), fast(x)
        assert got.dtype == torch.float32
        rel = ((got - want).norm() / want.norm()).item()
        assert 1e-5 < rel < 2e-2, rel  # really computed in bf16, and close
        low = {n for n, _ in fast.low_precision_parameters()}
        for name, p in fast.named_parameters():
            assert p.dtype == (torch.bfloat16 if name in low else torch.float32), name
        assert len(low) == 8 * len(fast.blocks)  # qkv, proj, lin1, lin2: weight + bias


def _toy_predictions(model, tok_dir, image, prompts):
    from evf_sam.predictor import EvfSamPredictor

    pred = EvfSamPredictor(model, tokenizer=tok_dir)
    pred.set_image(image)
    return pred.predict(prompts)


def test_bf16_masks_keep_iou_on_toy_evf_sam(tmp_path):
    """Full predictor path on a toy EVF-SAM: fast encoder in bf16 mixed precision + BEiT-3 linears in bf16
    against the all-fp32 reference model: per-prompt mask IoU >= 0.99."""
    from evf_sam.quantize import quantize_prompt_encoder
    from evf_sam.testing import TINY_SENTENCES, build_tiny_model, make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    model = build_tiny_model(seed=0, vocab_size=1000, sam_encoder="reference")
    with torch.no_grad():
        for name, p in model.sam.image_encoder.named_parameters():
            if "pos" in name:
                p.normal_(0.0, 0.5)
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    prompts = list(TINY_SENTENCES[:6])
    want = _toy_predictions(model, tok, image, prompts)
    use_fast_sam_encoder(model, compute_dtype=torch.bfloat16)
    quantize_prompt_encoder(model, "bf16")
    got = _toy_predictions(model, tok, image, prompts)
    assert 0.05 < want.masks.float().mean() < 0.95  # masks are not trivially empty / full
    for a, b in zip(want.masks, got.masks):
        assert (a & b).sum() / (a | b).sum() >= 0.99
    assert not torch.equal(want.logits, got.logits)


def test_use_fast_sam_encoder_on_evf_sam_keeps_state_dict():
    from evf_sam.testing import build_tiny_model, tiny_inputs

    model = build_tiny_model(seed=0, sam_encoder="reference")
    names = {k: v for k, v in model.state_dict().items()}
    inputs = tiny_inputs(model)
    with torch.no_grad():
        want = model(**inputs)[0]
    fast = use_fast_sam_encoder(model)
    assert model.sam.image_encoder is fast and isinstance(fast, FastImageEncoderViT)
    after = model.state_dict()
    assert list(after) == list(names) and all(after[k] is names[k] or torch.equal(after[k], names[k]) for k in names)
    assert not any(p.requires_grad for p in fast.parameters())  # the frozen encoder stays frozen
    with torch.no_grad():
        assert (model(**inputs)[0] - want).abs().max().item() <= 1e-4
    eff = build_tiny_model(seed=0, sam_variant="efficient_sam_tiny")
    with pytest.raises(TypeError, match="already attend through SDPA"):
        use_fast_sam_encoder(eff)


def test_compiled_blocks_trace_whole_and_match():
    """torch.compile of the blocks: dynamo captures each block as ONE graph (fullgraph=True raises on a graph
    break) and the compiled encoder equals the reference, fp32 and bf16 mixed. The aot_eager backend keeps the
    test fast; the inductor (C++) backend is exercised by the slow test below."""
    ref = _reference(*CASES["grid14_win5_pad"])
    fast = FastImageEncoderViT.from_reference(ref, share=False).compile_blocks(backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 224, 224)
    torch._dynamo.reset()
    with torch.no_grad():
        want = ref(x)
        assert (fast(x) - want).abs().max().item() <= 1e-4
        fast.set_compute_dtype(torch.bfloat16)
        rel = ((fast(x) - want).norm() / want.norm()).item()
    assert 1e-5 < rel < 2e-2


@pytest.mark.slow
def test_compiled_blocks_inductor():
    """The default backend (inductor, C++ codegen on CPU): ~1-2 min of compilation on 2 cores."""
    ref = _reference(128, 16, 32, 2, 2, 3, (1,))
    fast = FastImageEncoderViT.from_reference(ref, share=False).compile_blocks()
    x = torch.randn(1, 3, 128, 128)
    torch._dynamo.reset()
    with torch.no_grad():
        assert (fast(x) - ref(x)).abs().max().item() <= 1e-4


def test_set_compute_dtype_rejects_integer_dtypes():
    fast = FastImageEncoderViT.from_reference(_reference(*CASES["grid16_win8"]))
    with pytest.raises(ValueError, match="floating"):
        fast.set_compute_dtype(torch.int8)
    with pytest.raises(ValueError, match="needs a dtype"):
        copy.deepcopy(fast).set_compute_dtype(None).cast_linears_()
    _set_rel_pos_impl(fast, "flash")
    with pytest.raises(ValueError, match="rel_pos_impl"):
        fast(torch.randn(1, 3, 256, 256))


def test_config_sam_encoder_fast_builds_and_loads_official_checkpoints(tmp_path):
    """EvfSamConfig(sam_encoder="fast"): the same state dict names, official checkpoints load strictly."""
    import dataclasses

    from evf_sam.models.checkpoint import load_pretrained
    from evf_sam.models.evf_sam import EvfSamConfig, build_evf_sam
    from evf_sam.testing import build_tiny_model, tiny_inputs, write_official_checkpoint

    model = build_tiny_model(seed=0, sam_encoder="reference")
    ckpt = write_official_checkpoint(tmp_path / "ckpt", model, dtype=torch.float32)
    fast = build_evf_sam(dataclasses.replace(model.config, sam_encoder="fast"))
    assert isinstance(fast.sam.image_encoder, FastImageEncoderViT)
    assert not any(p.requires_grad for p in fast.sam.image_encoder.parameters())
    fast.load_state_dict(model.state_dict(), strict=True)
    reloaded = load_pretrained(ckpt)
    assert isinstance(reloaded.sam.image_encoder, FastImageEncoderViT)  # the default for SAM-1
    assert EvfSamConfig(sam_variant="efficient_sam_tiny").sam_encoder == "reference"  # its own encoder
    ref = use_reference_sam_encoder(load_pretrained(ckpt))
    assert type(ref) is ImageEncoderViT and not any(p.requires_grad for p in ref.parameters())
    inputs = tiny_inputs(model)
    with torch.no_grad():
        want = model(**inputs)[0]
        assert (fast(**inputs)[0] - want).abs().max().item() <= 1e-4
        assert (reloaded(**inputs)[0] - want).abs().max().item() <= 1e-4
        assert torch.equal(model.sam.image_encoder(inputs["sam_images"]), ref(inputs["sam_images"]))
    with pytest.raises(ValueError, match="already SDPA"):
        EvfSamConfig(sam_variant="efficient_sam_tiny", sam_encoder="fast")
    with pytest.raises(ValueError, match="unknown sam_encoder"):
        EvfSamConfig(sam_encoder="flash")

"""EfficientSAM backend: official tensor list, strict loading, arithmetic vs segment-anything and vs plain-torch
re-computations of the official (yformer/EfficientSAM) formulas, batched decoding, EVF-Effi-SAM post-processing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d as SamLayerNorm2d
from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom as SamPositionEmbeddingRandom
from segment_anything.modeling.transformer import Attention as SamAttention
from segment_anything.modeling.transformer import TwoWayTransformer as SamTwoWayTransformer

from evf_sam.models.checkpoint import StateDictMismatchError
from evf_sam.models.efficient_sam import (
    EFFICIENT_SAM_CONFIGS,
    OFFICIAL_SAM_SCALE,
    EfficientSam,
    LayerNorm2d,
    PositionEmbeddingRandom,
    TokenAttention,
    build_efficient_sam,
    load_efficient_sam_state_dict,
)

FIXTURE = Path(__file__).parent / "fixtures" / "efficient_sam_vits_keys.tsv"
TINY = EFFICIENT_SAM_CONFIGS["efficient_sam_tiny"]


def _read_fixture() -> dict[str, tuple[int, ...]]:
    out = {}
    for line in FIXTURE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, shape = line.split("\t")
            out[name] = tuple(int(x) for x in shape.split("x"))
    return out


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and buffer random (defaults such as zero pos_embed / unit norms would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return module


@pytest.fixture(scope="module")
def tiny() -> EfficientSam:
    return _randomize(build_efficient_sam("efficient_sam_tiny"), seed=1)


# ---------------------------------------------------------------------------------------------
# Architecture vs the official tensor list


@pytest.mark.parametrize("variant", ["efficient_sam_s", "efficient_sam_t"])
def test_state_dict_matches_official_file(variant):
    expected = _read_fixture()
    assert len(expected) == 278
    if variant == "efficient_sam_t":  # ViT-T: same names, encoder width 192 (qkv 576, MLP 768)
        width = {384: 192, 1152: 576, 1536: 768}
        expected = {k: tuple(width.get(s, s) for s in v) if k.startswith("image_encoder.") else v
                    for k, v in expected.items()}
    with torch.device("meta"):
        model = build_efficient_sam(variant)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same names, same order as the official module
    assert got == expected


def test_parameter_counts_match_paper():
    # EfficientSAM paper (arXiv 2312.00863): EfficientSAM-Ti 10.22M, EfficientSAM-S 26.41M parameters.
    for variant, millions in [("efficient_sam_s", 26.41), ("efficient_sam_t", 10.22)]:
        with torch.device("meta"):
            model = build_efficient_sam(variant)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n / 1e6 - millions) < 0.01, (variant, n)


def test_sizes_and_registry():
    with torch.device("meta"):
        s = build_efficient_sam("efficient_sam_s")
        t = build_efficient_sam("efficient_sam_t")
    for m in (s, t):
        assert (m.image_size, m.prompt_dim, m.image_embedding_size) == (1024, 256, (64, 64))
        assert not m.training
    assert s.image_encoder.blocks[0].attn.num_heads == 6 and t.image_encoder.blocks[0].attn.num_heads == 3
    tiny = build_efficient_sam("efficient_sam_tiny")
    assert (tiny.image_size, tiny.prompt_dim, tiny.image_embedding_size) == (256, 32, (16, 16))
    assert EfficientSam.resize_mode == "square"
    assert OFFICIAL_SAM_SCALE == {"small": "efficient_sam_s", "tiny": "efficient_sam_t"}
    with pytest.raises(ValueError, match="efficient_sam_s, efficient_sam_t, efficient_sam_tiny"):
        build_efficient_sam("vit_s")


# ---------------------------------------------------------------------------------------------
# Loading


def test_round_trip_official_format(tmp_path, tiny):
    path = tmp_path / "efficient_sam_tiny.pt"
    torch.save({"model": tiny.state_dict()}, path)
    fresh = build_efficient_sam("efficient_sam_tiny", checkpoint=path)
    for k, v in tiny.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    images = torch.randn(2, 3, 256, 256)
    prompts = torch.randn(3, 1, 32)
    index = torch.tensor([1, 0, 1])
    with torch.no_grad():
        a, b = tiny.encode_image(images), fresh.encode_image(images)
        assert torch.equal(a, b)
        for x, y in zip(tiny.decode_text_prompts(a, prompts, index), fresh.decode_text_prompts(b, prompts, index)):
            assert torch.equal(x, y)


def test_load_onto_meta_model(tiny):
    with torch.device("meta"):
        model = build_efficient_sam("efficient_sam_tiny")
    load_efficient_sam_state_dict(model, {"model": tiny.state_dict()})
    emb = torch.randn(1, 32, 16, 16)
    prompts = torch.randn(2, 1, 32)
    with torch.no_grad():
        assert torch.equal(model.decode_text_prompts(emb, prompts, torch.zeros(2, dtype=torch.long))[0],
                           tiny.decode_text_prompts(emb, prompts, torch.zeros(2, dtype=torch.long))[0])


def test_renamed_key_raises_and_copies_nothing(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    sd["mask_decoder.iou_token.weight_renamed"] = sd.pop("mask_decoder.iou_token.weight")
    path = tmp_path / "bad.pt"
    torch.save({"model": sd}, path)
    fresh = build_efficient_sam("efficient_sam_tiny")
    before = fresh.image_encoder.pos_embed.detach().clone()
    with pytest.raises(StateDictMismatchError) as e:
        load_efficient_sam_state_dict(fresh, path)
    assert e.value.missing == ["mask_decoder.iou_token.weight"]
    assert e.value.unexpected == ["mask_decoder.iou_token.weight_renamed"]
    assert "mask_decoder.iou_token.weight_renamed" in str(e.value)
    assert torch.equal(fresh.image_encoder.pos_embed, before)  # nothing copied


def test_changed_shape_raises_with_key_and_shapes(tiny):
    sd = dict(tiny.state_dict())
    sd["image_encoder.pos_embed"] = torch.zeros(1, 257, 64)  # e.g. a 256 px pre-training grid
    with pytest.raises(StateDictMismatchError) as e:
        load_efficient_sam_state_dict(build_efficient_sam("efficient_sam_tiny"), {"model": sd})
    assert e.value.mismatched == [("image_encoder.pos_embed", (1, 257, 64), (1, 197, 64))]
    assert "image_encoder.pos_embed" in str(e.value) and "(1, 257, 64)" in str(e.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        build_efficient_sam("efficient_sam_tiny", checkpoint=tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------
# Pieces equal to segment-anything's


def test_positional_encoding_equals_sam(tiny):
    ref = SamPositionEmbeddingRandom(16)
    ref.positional_encoding_gaussian_matrix.copy_(tiny.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix)
    assert torch.allclose(tiny.prompt_encoder.get_dense_pe(), ref((16, 16))[None], atol=1e-6)
    ours = PositionEmbeddingRandom(8)  # non-square grids too
    ref = SamPositionEmbeddingRandom(8)
    ref.positional_encoding_gaussian_matrix.copy_(ours.positional_encoding_gaussian_matrix)
    assert ours((5, 7)).shape == (16, 5, 7) and torch.allclose(ours((5, 7)), ref((5, 7)), atol=1e-6)


@pytest.mark.parametrize("downsample", [1, 2])
def test_token_attention_equals_sam(downsample):
    ours, ref = TokenAttention(32, 2, downsample), SamAttention(32, 2, downsample)
    _randomize(ours)
    ref.load_state_dict(ours.state_dict())
    q, k, v = torch.randn(3, 6, 32), torch.randn(3, 40, 32), torch.randn(3, 40, 32)
    with torch.no_grad():
        assert torch.allclose(ours(q, k, v), ref(q, k, v), atol=1e-5)


def test_layernorm2d_equals_sam():
    ours, ref = _randomize(LayerNorm2d(8)), SamLayerNorm2d(8)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Plain-torch re-computations of the official formulas (where EfficientSAM differs from SAM)


def _lin(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def _ln(norm: torch.nn.LayerNorm, x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * norm.weight + norm.bias


def _softmax_attention(q, k, v, heads):
    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = a @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def _attn(mod, q, k, v, heads):
    return _lin(mod.out_proj, _softmax_attention(_lin(mod.q_proj, q), _lin(mod.k_proj, k), _lin(mod.v_proj, v), heads))


def _mlp(mod, x):  # official MLPBlock: (Linear -> GELU) * n, then fc
    for seq in mod.layers:
        x = F.gelu(_lin(seq[0], x))
    return _lin(mod.fc, x)


def _two_way_ref(t, image, pe, tokens, heads):
    """efficient_sam/two_way_transformer.py: PE added to the queries (not only q/k) after the first layer."""
    keys = image.flatten(2).transpose(1, 2)
    kpe = pe.flatten(2).transpose(1, 2)
    q = tokens
    for i, layer in enumerate(t.layers):
        if i > 0:
            q = q + tokens
        q = _ln(layer.norm1, q + _attn(layer.self_attn, q, q, q, heads))
        q = _ln(layer.norm2, q + _attn(layer.cross_attn_token_to_image, q + tokens, keys + kpe, keys, heads))
        q = _ln(layer.norm3, q + _mlp(layer.mlp, q))
        keys = _ln(layer.norm4, keys + _attn(layer.cross_attn_image_to_token, keys + kpe, q + tokens, q, heads))
    q = _ln(t.norm_final_attn, q + _attn(t.final_attn_token_to_image, q + tokens, keys + kpe, keys, heads))
    return q, keys


def _ln2d(norm, x, eps=1e-6):
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * norm.weight[:, None, None] + norm.bias[:, None, None]


def _encoder_ref(enc, x, arch):
    """efficient_sam_encoder.py: patch conv, + bicubic-resized 14x14 table ([CLS] row dropped), plain ViT, neck."""
    x = F.conv2d(x, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias, stride=arch.patch_size)
    b, d, h, w = x.shape
    g = arch.pretrain_image_size // arch.patch_size
    table = enc.pos_embed[0, 1:].reshape(g, g, d).permute(2, 0, 1)[None]
    x = (x + F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)).flatten(2).transpose(1, 2)
    for blk in enc.blocks:
        y = _ln(blk.norm1, x, eps=1e-6)
        q, k, v = _lin(blk.attn.qkv, y).split(d, dim=-1)
        x = x + _lin(blk.attn.proj, _softmax_attention(q, k, v, arch.encoder_num_heads))
        x = x + _lin(blk.mlp.fc2, F.gelu(_lin(blk.mlp.fc1, _ln(blk.norm2, x, eps=1e-6))))
    x = x.transpose(1, 2).reshape(b, d, h, w)
    x = _ln2d(enc.neck[1], F.conv2d(x, enc.neck[0].weight))
    return _ln2d(enc.neck[3], F.conv2d(x, enc.neck[2].weight, padding=1))


def _dense_pe_ref(gaussian, h, w):
    ys, xs = (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w
    xy = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2), [..., 0] = x
    f = 2 * math.pi * ((2 * xy - 1) @ gaussian)
    return torch.cat([torch.sin(f), torch.cos(f)], dim=-1).permute(2, 0, 1)[None]  # (1, C, h, w)


def _decoder_ref(model, emb, prompts):
    """efficient_sam_decoder.py MaskDecoder.predict_masks with EVF's inputs: no dense embedding, GroupNorm/GELU
    upscaling, GELU MLP heads. emb (N, C, h, w), prompts (N, 1, C) -> masks (N, 4, 4h, 4w), iou (N, 4)."""
    dec = model.mask_decoder
    n, c, h, w = emb.shape
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight])[None].expand(n, -1, -1)
    tokens = torch.cat([out_tokens, prompts], dim=1)
    pe = _dense_pe_ref(model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix, h, w)
    hs, src = _two_way_ref(dec.transformer, emb, pe, tokens, TINY.decoder_num_heads)
    up = src.transpose(1, 2).reshape(n, c, h, w)
    l0, l1 = dec.final_output_upscaling_layers
    up = F.conv_transpose2d(up, l0[0].weight, l0[0].bias, stride=2)
    mu = up.mean(dim=(1, 2, 3), keepdim=True)  # GroupNorm(1, C): over channels AND pixels of each sample
    var = ((up - mu) ** 2).mean(dim=(1, 2, 3), keepdim=True)
    up = F.gelu((up - mu) / torch.sqrt(var + 1e-5) * l0[1].weight[:, None, None] + l0[1].bias[:, None, None])
    up = F.gelu(F.conv_transpose2d(up, l1[0].weight, l1[0].bias, stride=2))
    hyper = torch.stack([_mlp(dec.output_hypernetworks_mlps[i], hs[:, 1 + i]) for i in range(4)], dim=1)
    return torch.einsum("nmc,nchw->nmhw", hyper, up), _mlp(dec.iou_prediction_head, hs[:, 0])


def test_image_encoder_matches_recomputation(tiny):
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        got = tiny.encode_image(x)
        ref = _encoder_ref(tiny.image_encoder, x, TINY)
    assert got.shape == (2, 32, 16, 16)
    assert torch.allclose(got, ref, atol=1e-4)
    with pytest.raises(ValueError, match="256"):
        tiny.encode_image(torch.randn(1, 3, 224, 224))


def test_two_way_transformer_matches_recomputation_not_sam(tiny):
    t = tiny.mask_decoder.transformer
    image, pe, tokens = torch.randn(2, 32, 16, 16), torch.randn(1, 32, 16, 16), torch.randn(2, 6, 32)
    with torch.no_grad():
        q, k = t(image, pe, tokens)
        q_ref, k_ref = _two_way_ref(t, image, pe.expand(2, -1, -1, -1), tokens, TINY.decoder_num_heads)
        assert torch.allclose(q, q_ref, atol=1e-4) and torch.allclose(k, k_ref, atol=1e-4)
        # segment-anything's block (PE in q/k only, no residual in the first self-attention) is a different
        # function of the same weights.
        sam = SamTwoWayTransformer(2, 32, 2, 64, activation=torch.nn.GELU)
        rename = {".mlp.layers.0.0.": ".mlp.lin1.", ".mlp.fc.": ".mlp.lin2."}
        sd = {}
        for name, v in t.state_dict().items():
            for a, b in rename.items():
                name = name.replace(a, b)
            sd[name] = v
        sam.load_state_dict(sd)
        q_sam, _ = sam(image, pe, tokens)
    assert (q_sam - q).abs().max() > 1e-2


def test_decoder_matches_recomputation_and_multimask_picks_best_iou(tiny):
    emb = torch.randn(2, 32, 16, 16)
    prompts = torch.randn(4, 1, 32)
    index = torch.tensor([1, 0, 0, 1])
    with torch.no_grad():
        masks_ref, iou_ref = _decoder_ref(tiny, emb[index], prompts)
        single, single_iou = tiny.decode_text_prompts(emb, prompts, index, multimask_output=False)
        multi, multi_iou = tiny.decode_text_prompts(emb, prompts, index, multimask_output=True)
    assert single.shape == multi.shape == (4, 1, 64, 64) and single_iou.shape == multi_iou.shape == (4, 1)
    assert torch.allclose(single, masks_ref[:, :1], atol=1e-4)
    assert torch.allclose(single_iou, iou_ref[:, :1], atol=1e-5)
    best = iou_ref[:, 1:].argmax(dim=1) + 1  # among the 3 multimask outputs
    for i in range(4):
        assert torch.allclose(multi[i, 0], masks_ref[i, best[i]], atol=1e-4)
        assert torch.allclose(multi_iou[i, 0], iou_ref[i, 1:].max(), atol=1e-5)


def test_batched_decoding_equals_prompt_by_prompt(tiny):
    emb = torch.randn(3, 32, 16, 16)
    prompts = torch.randn(5, 1, 32)
    index = torch.tensor([2, 0, 2, 1, 0])
    with torch.no_grad():
        for multimask in (False, True):
            batched = tiny.decode_text_prompts(emb, prompts, index, multimask_output=multimask)
            one = [tiny.decode_text_prompts(emb[j:j + 1], prompts[i:i + 1], None, multimask_output=multimask)
                   for i, j in enumerate(index.tolist())]
            assert torch.allclose(batched[0], torch.cat([o[0] for o in one]), atol=1e-5)
            assert torch.allclose(batched[1], torch.cat([o[1] for o in one]), atol=1e-6)
        # one image, several prompts (the expand path); (N, C) prompts; image_index=None with N == B
        a = tiny.decode_text_prompts(emb[:1], prompts[:, 0], torch.zeros(5, dtype=torch.long))
        b = tiny.decode_text_prompts(emb[:1].expand(5, -1, -1, -1).contiguous(), prompts, None)
        assert torch.allclose(a[0], b[0], atol=1e-5)
    with pytest.raises(ValueError, match="one prompt per image"):
        tiny.decode_text_prompts(emb, prompts)
    with pytest.raises(ValueError, match="image_index"):
        tiny.decode_text_prompts(emb, prompts, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="image_embeddings"):
        tiny.decode_text_prompts(torch.randn(1, 32, 8, 8), prompts[:1])


def test_low_precision_keeps_pe_float32(tiny):
    model = build_efficient_sam("efficient_sam_tiny")
    model.load_state_dict(tiny.state_dict())
    model.to(torch.bfloat16)
    assert model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    emb = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        low, iou = model.decode_text_prompts(emb.bfloat16(), torch.randn(2, 1, 32), torch.zeros(2, dtype=torch.long))
        ref, _ = tiny.decode_text_prompts(emb, torch.randn(2, 1, 32), torch.zeros(2, dtype=torch.long))
    assert low.dtype == iou.dtype == torch.bfloat16 and low.shape == ref.shape
    assert torch.isfinite(low.float()).all()


# ---------------------------------------------------------------------------------------------
# Post-processing (official EvfEffiSamModel.postprocess_masks)


def test_postprocess_size_and_known_values(tiny):
    const = torch.full((2, 1, 64, 64), 3.5)
    out = tiny.postprocess_masks(const, (200, 256), (300, 384))
    assert out.shape == (2, 1, 300, 384) and torch.allclose(out, torch.full_like(out, 3.5))

    left = torch.full((1, 1, 64, 64), -4.0)
    left[..., :32] = 4.0
    for original in [(37, 90), (300, 200), (512, 512)]:
        out = tiny.postprocess_masks(left, (256, 256), original)
        h, w = original
        assert out.shape == (1, 1, h, w)
        positive = out[0, 0] > 0
        assert positive[:, : w // 2 - 1].all() and not positive[:, w // 2 + 1:].any()
        assert torch.equal(positive, positive[:1].expand(h, -1))  # no vertical structure appears

    # No crop: the stretched (not padded) input leaves nothing to remove, so input_size does not matter and the
    # result is one bilinear resize of the whole low-res map to the original size.
    x = torch.randn(3, 1, 64, 64)
    a = tiny.postprocess_masks(x, (256, 128), (100, 50))
    b = tiny.postprocess_masks(x, (128, 256), (100, 50))
    assert torch.equal(a, b)
    assert torch.allclose(a, F.interpolate(x, (100, 50), mode="bilinear", align_corners=False))
    assert tiny.postprocess_masks(x.bfloat16(), (1, 1), (10, 20)).dtype == torch.bfloat16

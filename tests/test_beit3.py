"""BEiT-3 encoder: parity with torchscale (golden fixture), registry, masking, fusion depth,
gradient checkpointing and strict loading. torchscale itself is not needed."""

from __future__ import annotations

import argparse
import hashlib
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from evf_sam.models.beit3 import (
    BEIT3_CONFIGS,
    BEiT3,
    BEiT3Config,
    BEiT3LoadError,
    build_beit3,
    load_beit3_state_dict,
    save_beit3_state_dict,
)

GOLDEN = Path(__file__).parent / "fixtures" / "beit3_golden.pt"
# Small enough for 2 shared CPU cores; used for every non-golden test.
TINY = dict(embed_dim=32, depth=2, num_heads=4, ffn_dim=64, img_size=32, patch_size=16,
            vocab_size=100, max_text_positions=18)


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(GOLDEN, weights_only=True)


def _golden_model(golden: dict) -> BEiT3:
    model = BEiT3(BEiT3Config(**golden["config"])).eval()
    load_beit3_state_dict(model, golden["state_dict"])
    return model


def _perturbed(model: BEiT3, seed: int = 0) -> BEiT3:
    """Random non-trivial weights (LayerNorms included) so every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _tiny(**overrides) -> BEiT3:
    return _perturbed(build_beit3("beit3_tiny", **{**TINY, **overrides})).eval()


def _text(lengths: list[int], t: int | None = None, vocab: int = 100, seed: int = 0):
    """Right-padded <s> ... </s> prompts: ids (B, T) long, padding mask (B, T) bool."""
    g = torch.Generator().manual_seed(seed)
    t = t or max(lengths)
    ids = torch.ones(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n - 1] = 0, 2
        ids[i, 1 : n - 1] = torch.randint(3, vocab, (n - 2,), generator=g)
    return ids, ids == 1


def _image(b: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ golden parity


def test_golden_fixture_is_small():
    assert GOLDEN.stat().st_size < 300 * 1024


@pytest.mark.parametrize("mode", ["text", "image", "fused"])
def test_matches_torchscale(golden, mode):
    model = _golden_model(golden)
    inp = golden["inputs"]
    kwargs = {
        "text": dict(text_ids=inp["text_ids"], text_padding_mask=inp["text_padding_mask"]),
        "image": dict(image=inp["image"]),
        "fused": dict(text_ids=inp["text_ids"], text_padding_mask=inp["text_padding_mask"],
                      image=inp["image"]),
    }[mode]
    with torch.no_grad():
        out = model(**kwargs)
    ref = golden["outputs"][mode]
    assert out.hidden.shape == ref.shape
    # torchscale zeroes padded text embeddings and lets padded queries attend to the real keys;
    # we do the same, so even the (meaningless) padded positions match and we compare all of them.
    torch.testing.assert_close(out.hidden, ref, atol=1e-5, rtol=1e-5)
    # torchscale reports -1 for image-only; our contract says N (all tokens are vision tokens).
    expected_split = {"text": 0, "image": ref.shape[1],
                      "fused": golden["multiway_split_position"]["fused"]}
    assert out.multiway_split_position == expected_split[mode]
    if mode == "image":
        assert out.padding_mask is None
    else:
        assert out.padding_mask.shape == ref.shape[:2]
        assert out.padding_mask[:, -inp["text_ids"].shape[1]:].equal(inp["text_padding_mask"])
        assert not out.padding_mask[:, : out.multiway_split_position].any()


def test_golden_max_text_len(golden):
    model = _golden_model(golden)
    assert model.max_text_len == golden["config"]["max_text_positions"] - 2  # fairseq offset
    ids = torch.zeros(1, model.max_text_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_text_len"):
        model(text_ids=ids)
    model(text_ids=ids[:, : model.max_text_len])


# ------------------------------------------------------------------------------ registry


def _meta_state_shapes(name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_beit3(name)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# sha256 of the sorted "name\tshape" lines of the mm_extractor.beit3.* rows (prefix stripped) of
# the official EVF-SAM checkpoints (shared/reference/evf_sam_{base,large}_keys.tsv), with their
# tensor and parameter counts.
OFFICIAL_BEIT3 = {
    "beit3_base": (491, 220_987_392,
                   "c9971a1d7594909719a1f8fc2830aa5bd3b3af42bcda01ab0240bd9fe88caa04"),
    "beit3_large": (971, 672_702_464,
                    "affed3efc6f305236254e26eef480abfa8a243fd33d3d29bcb493e8957a5aeaf"),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_BEIT3))
def test_official_key_set_and_param_count(name):
    shapes = _meta_state_shapes(name)
    n_tensors, n_params, digest = OFFICIAL_BEIT3[name]
    assert len(shapes) == n_tensors
    assert sum(math.prod(s) for s in shapes.values()) == n_params
    lines = sorted(f"{k}\t{s}" for k, s in shapes.items())
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == digest
    assert shapes["text_embed.weight"][0] == 64010
    assert shapes["encoder.embed_positions.A.weight"][0] == 199  # 196 patches + [CLS] + 2
    assert shapes["encoder.embed_positions.B.weight"][0] == 1024


def test_registry_sizes():
    def dims(name: str) -> tuple[int, int, int, int]:
        c = BEIT3_CONFIGS[name]
        return c.depth, c.embed_dim, c.num_heads, c.ffn_dim

    assert dims("beit3_large") == (24, 1024, 16, 4096)
    assert dims("beit3_base") == (12, 768, 12, 3072)
    with pytest.raises(ValueError, match="unknown"):
        build_beit3("beit3_huge")
    with pytest.raises(ValueError, match="fused_layers"):
        build_beit3("beit3_tiny", fused_layers=3)


@pytest.mark.parametrize("name", sorted(BEIT3_CONFIGS))
def test_registry_forward_no_nan(name):
    # Every variant's code path at toy size (large/base only get meta-device checks above).
    model = _tiny() if name == "beit3_tiny" else _perturbed(build_beit3(name, **TINY)).eval()
    ids, pad = _text([5, 3])
    img = _image(2)
    nv = (32 // 16) ** 2 + 1
    with torch.no_grad():
        fused = model(text_ids=ids, text_padding_mask=pad, image=img)
        text = model(text_ids=ids, text_padding_mask=pad)
        image = model(image=img)
    assert fused.hidden.shape == (2, nv + 5, 32) and fused.multiway_split_position == nv
    assert text.hidden.shape == (2, 5, 32) and text.multiway_split_position == 0
    assert image.hidden.shape == (2, nv, 32) and image.multiway_split_position == nv
    for out in (fused, text, image):
        assert torch.isfinite(out.hidden).all()


def test_config_fields_match_design():
    assert [f.name for f in fields(BEiT3Config)] == [
        "embed_dim", "depth", "num_heads", "ffn_dim", "img_size", "patch_size", "in_chans",
        "vocab_size", "max_text_positions", "layernorm_eps", "fused_layers", "grad_checkpointing",
    ]


# ------------------------------------------------------------------------------ masking


def test_padding_invariance():
    model = _tiny()
    ids, pad = _text([6, 3])
    ids_more, pad_more = _text([6, 3], t=11)  # same prompts, 5 more pad columns
    img = _image(2)
    with torch.no_grad():
        a = model(text_ids=ids, text_padding_mask=pad, image=img).hidden
        b = model(text_ids=ids_more, text_padding_mask=pad_more, image=img).hidden
        ta = model(text_ids=ids, text_padding_mask=pad).hidden
        tb = model(text_ids=ids_more, text_padding_mask=pad_more).hidden
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-5, rtol=1e-5)  # vision [CLS]
    nv = a.shape[1] - ids.shape[1]
    torch.testing.assert_close(a[:, : nv + 6], b[:, : nv + 6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ta[0], tb[0, :6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ta[1, :3], tb[1, :3], atol=1e-5, rtol=1e-5)


def test_padding_is_honoured_not_ignored():
    # Changing the ids under the padding must not change anything real.
    model = _tiny()
    ids, pad = _text([6, 3])
    ids2 = ids.masked_fill(pad, 57)
    img = _image(2)
    with torch.no_grad():
        a = model(text_ids=ids, text_padding_mask=pad, image=img).hidden
        b = model(text_ids=ids2, text_padding_mask=pad, image=img).hidden
        c = model(text_ids=ids2, image=img).hidden  # no mask: the pads are real tokens
    torch.testing.assert_close(a[:, 0], b[:, 0], atol=1e-6, rtol=1e-6)
    assert (a[1, 0] - c[1, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("fused_layers", [None, 1])
def test_fully_padded_rows_are_finite(fused_layers):
    model = _tiny(fused_layers=fused_layers)
    ids, pad = _text([5, 3])
    pad[1] = True  # an entirely padded prompt
    with torch.no_grad():
        text = model(text_ids=ids, text_padding_mask=pad).hidden
        fused = model(text_ids=ids, text_padding_mask=pad, image=_image(2)).hidden
    assert torch.isfinite(text).all() and torch.isfinite(fused).all()


# ------------------------------------------------------------------------------ fusion depth


def _same_weights(ref: BEiT3, **overrides) -> BEiT3:
    other = build_beit3("beit3_tiny", **{**TINY, **overrides}).eval()
    load_beit3_state_dict(other, ref.state_dict())
    return other


def test_fused_layers_depth_equals_all_fused():
    ref = _tiny()
    full = _same_weights(ref, fused_layers=TINY["depth"])
    ids, pad = _text([5, 2])
    img = _image(2)
    with torch.no_grad():
        torch.testing.assert_close(full(text_ids=ids, text_padding_mask=pad, image=img).hidden,
                                   ref(text_ids=ids, text_padding_mask=pad, image=img).hidden,
                                   atol=0, rtol=0)


def test_fused_layers_one_differs_from_all():
    ref = _tiny()
    one = _same_weights(ref, fused_layers=1)
    ids, pad = _text([5, 2])
    img = _image(2)
    with torch.no_grad():
        a = ref(text_ids=ids, text_padding_mask=pad, image=img).hidden
        b = one(text_ids=ids, text_padding_mask=pad, image=img).hidden
        # single-modality inputs have nothing to separate: identical
        torch.testing.assert_close(one(image=img).hidden, ref(image=img).hidden, atol=0, rtol=0)
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-3


def test_fused_layers_zero_isolates_vision():
    model = _tiny(fused_layers=0)
    img = _image(2)
    ids_a, pad_a = _text([5, 2], seed=1)
    ids_b, pad_b = _text([3, 4], seed=2)
    with torch.no_grad():
        a = model(text_ids=ids_a, text_padding_mask=pad_a, image=img).hidden
        b = model(text_ids=ids_b, text_padding_mask=pad_b, image=img).hidden
        alone = model(image=img).hidden
    nv = alone.shape[1]
    torch.testing.assert_close(a[:, :nv], b[:, :nv], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a[:, :nv], alone, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ checkpointing


def test_grad_checkpointing_same_outputs_and_grads():
    ref = _tiny().train()
    ckpt = _same_weights(ref, grad_checkpointing=True).train()
    assert ckpt.grad_checkpointing
    ids, pad = _text([5, 2])
    img = _image(2)
    w = torch.randn(2, 5 + 5, 32)
    outs = []
    for model in (ref, ckpt):
        out = model(text_ids=ids, text_padding_mask=pad, image=img).hidden
        (out * w).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6)
    grads_ref = dict(ref.named_parameters())
    for name, p in ckpt.named_parameters():
        g_ref = grads_ref[name].grad
        if g_ref is None:  # e.g. mask_token: unused, no grad in either
            assert p.grad is None, name
            continue
        torch.testing.assert_close(p.grad, g_ref, atol=1e-6, rtol=1e-5, msg=name)


# ------------------------------------------------------------------------------ loading


def test_strict_load_reports_keys_by_name():
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    del sd["encoder.layers.1.ffn.B.fc2.bias"]
    sd["encoder.output_projection.weight"] = torch.zeros(100, 32)
    sd["text_embed.weight"] = torch.zeros(64010, 32)
    with pytest.raises(BEiT3LoadError) as err:
        load_beit3_state_dict(model, sd)
    e = err.value
    assert isinstance(e, RuntimeError)
    assert e.missing == ["encoder.layers.1.ffn.B.fc2.bias"]
    assert e.unexpected == ["encoder.output_projection.weight"]
    assert e.mismatched == [("text_embed.weight", (64010, 32), (100, 32))]
    msg = str(e)
    for s in ("encoder.layers.1.ffn.B.fc2.bias", "encoder.output_projection.weight",
              "text_embed.weight", "(64010, 32)", "(100, 32)"):
        assert s in msg
    for k, v in model.state_dict().items():  # nothing was copied
        assert v.equal(before[k]), k


def test_load_official_style_pth(golden, tmp_path):
    path = tmp_path / "beit3_tiny_patch16_224.pth"
    state = {f"beit3.{k}": v for k, v in golden["state_dict"].items()}
    state["mim_head.weight"] = torch.zeros(8, 32)  # pretraining heads: ignored, reported
    state["mlm_head.bias"] = torch.zeros(100)
    torch.save({"model": state}, path)

    model = BEiT3(BEiT3Config(**golden["config"])).eval()
    result = load_beit3_state_dict(model, path)
    assert sorted(result.ignored) == ["mim_head.weight", "mlm_head.bias"]
    assert len(result.loaded) == len(golden["state_dict"])
    inp = golden["inputs"]
    with torch.no_grad():
        out = model(text_ids=inp["text_ids"], text_padding_mask=inp["text_padding_mask"],
                    image=inp["image"])
    torch.testing.assert_close(out.hidden, golden["outputs"]["fused"], atol=1e-5, rtol=1e-5)

    # a prefixed dict passed directly, and a prefixed dict missing a beit3 key
    load_beit3_state_dict(model, state)
    del state["beit3.vision_embed.mask_token"]
    with pytest.raises(BEiT3LoadError, match="vision_embed.mask_token"):
        load_beit3_state_dict(model, {"model": state})


def test_load_refuses_arbitrary_pickles(golden, tmp_path):
    path = tmp_path / "finetuned.pth"
    torch.save({"model": golden["state_dict"], "args": argparse.Namespace(lr=1.0)}, path)
    model = BEiT3(BEiT3Config(**golden["config"]))
    with pytest.raises(Exception, match="(?i)weights_only|unpickl"):
        load_beit3_state_dict(model, path)


def test_saved_pth_has_the_official_layout_and_loads_strictly_into_a_fresh_model(tmp_path):
    """save_beit3_state_dict writes {"model": {"beit3.*"}} (what load_beit3_state_dict and the official
    BEiT-3 .pth use); a fresh model loads it strictly and ends up with identical tensors; an adapter
    subclass (the prompt encoder) writes the same torchscale names."""
    from evf_sam.models.encoders import build_prompt_encoder

    torch.manual_seed(0)
    src = build_beit3("beit3_tiny")
    path = save_beit3_state_dict(src, tmp_path / "enc.pth")
    obj = torch.load(path, weights_only=True)
    assert list(obj) == ["model"] and set(obj["model"]) == {f"beit3.{k}" for k in src.state_dict()}
    torch.manual_seed(1)
    dst = build_beit3("beit3_tiny")
    result = load_beit3_state_dict(dst, path)
    assert result.ignored == [] and all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    adapter = build_prompt_encoder("beit3_tiny", fusion="late")
    saved = torch.load(save_beit3_state_dict(adapter, tmp_path / "adapter.pth"), weights_only=True)["model"]
    assert set(saved) == set(obj["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.pth", "enc.pth"]  # no temporary file left

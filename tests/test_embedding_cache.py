"""Frozen SAM image-embedding cache: same values as the encoder (fp32) or within the stated tolerance
(fast encoder in bf16, 16-bit storage), keyed by weights + preprocessing + how rows are computed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evf_sam.engine.embedding_cache import EmbeddingCache, cache_key
from evf_sam.testing import build_tiny_model

EXACT = {"encoder": "model", "precision": "fp32"}  # the model's own encoder in fp32: equal to encode_image


def _images(model):
    s = model.sam_image_size

    def load(i: int) -> torch.Tensor:
        return torch.randn(3, s, s, generator=torch.Generator().manual_seed(int(i)))

    return load


def test_cache_matches_encoder_and_is_reused(tmp_path):
    model = build_tiny_model(seed=0)
    load = _images(model)
    ids = [7, 3, 11, 5, 2]
    cache = EmbeddingCache.open_or_build(tmp_path, model, ids, load, batch_size=2, dtype="float32", **EXACT)
    with torch.no_grad():
        ref = model.encode_image(torch.stack([load(i) for i in [11, 2]]))
    got = cache.get([11, 2])
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    index = json.loads((cache.path / "index.json").read_text())
    assert index["complete"] and index["image_ids"] == sorted(ids)
    mtime = (cache.path / "embeddings.npy").stat().st_mtime_ns
    again = EmbeddingCache.open_or_build(tmp_path, model, ids[:3], load, dtype="float32", **EXACT)
    assert again.path == cache.path and (cache.path / "embeddings.npy").stat().st_mtime_ns == mtime

    f16 = EmbeddingCache.open_or_build(tmp_path, model, ids, load, dtype="float16", **EXACT)
    assert f16.path != cache.path and f16.array.dtype == np.float16
    torch.testing.assert_close(f16.get([11, 2]), ref, rtol=1e-2, atol=2e-3)  # fp16 storage tolerance


def test_rebuilt_when_sam_weights_or_preprocessing_change(tmp_path):
    model = build_tiny_model(seed=0)
    load = _images(model)
    first = EmbeddingCache.open_or_build(tmp_path, model, [1, 2], load, dtype="float32", **EXACT)
    key0, _ = cache_key(model, dtype="float32", **EXACT)
    assert first.key == key0
    with torch.no_grad():
        model.sam.image_encoder.neck[0].weight.add_(0.1)  # "new SAM weights"
    second = EmbeddingCache.open_or_build(tmp_path, model, [1, 2], load, dtype="float32", **EXACT)
    assert second.key != first.key and second.path != first.path
    with torch.no_grad():
        ref = model.encode_image(load(1)[None])
    torch.testing.assert_close(second.get([1]), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first.get([1]), second.get([1]))
    # other preprocessing parameters (e.g. pixel mean) -> another key
    model.sam.pixel_mean.add_(1.0)
    assert cache_key(model, dtype="float32", **EXACT)[0] != second.key
    # the encoder's other parts (prompt encoder, decoder) do not invalidate it
    model.sam.pixel_mean.sub_(1.0)
    with torch.no_grad():
        model.sam.mask_decoder.iou_token.weight.add_(1.0)
    assert cache_key(model, dtype="float32", **EXACT)[0] == second.key


def test_incomplete_build_is_never_read(tmp_path):
    model = build_tiny_model(seed=0)
    load = _images(model)
    key, _ = cache_key(model, dtype="float32", **EXACT)
    (tmp_path / f"{key}.tmp-deadbeef").mkdir()  # a crashed build
    bad = tmp_path / key
    bad.mkdir()
    (bad / "index.json").write_text(json.dumps({"complete": False}))  # not finalised
    cache = EmbeddingCache.open_or_build(tmp_path, model, [4], load, dtype="float32", **EXACT)
    assert cache.path == bad and json.loads((bad / "index.json").read_text())["complete"]
    assert len(cache) == 1 and 4 in cache


@pytest.mark.parametrize("dtype, stored", [("float16", np.float16), ("bfloat16", np.uint16)])
def test_fast_bf16_cache_dtype_and_decode_tolerance(tmp_path, dtype, stored):
    """The default build (fast encoder, bf16) in 16-bit storage: the stored dtype, and masks decoded from
    the cache against those from the fp32 reference encoder. Measured (tiny model): embedding max |diff|
    0.011 (max |emb| 3.8), low-res logits 6.3e-4 (max |logit| 0.12), mask IoU 0.9993 (float16) / 0.9988
    (bfloat16); plain bf16 autocast of the reference encoder: 0.033 / 2.1e-3 / 0.9965."""
    model = build_tiny_model(seed=0)
    load = _images(model)
    ids = [1, 2, 3]
    cache = EmbeddingCache.open_or_build(tmp_path, model, ids, load, dtype=dtype)  # defaults: fast, bf16
    assert cache.array.dtype == stored and cache.meta["encoder"] == "fast" and cache.meta["precision"] == "bf16"
    index = json.loads((cache.path / "index.json").read_text())
    assert index["dtype"] == dtype
    got = cache.get(ids)  # (3, C, h, w) float32
    assert got.dtype == torch.float32
    if dtype == "bfloat16":  # what was stored are bf16 values: they survive a bf16 round trip exactly
        assert torch.equal(got.to(torch.bfloat16).float(), got)
    else:
        assert torch.equal(got.half().float(), got) and not torch.equal(got.to(torch.bfloat16).float(), got)
    with torch.no_grad():
        ref = model.encode_image(torch.stack([load(i) for i in ids]))  # segment-anything encoder, fp32
        prompts = torch.randn(6, 1, model.projector.out_dim, generator=torch.Generator().manual_seed(0))
        image_index = torch.tensor([0, 0, 1, 1, 2, 2])
        low_ref, _ = model.decode_masks(ref, prompts, image_index)
        low, _ = model.decode_masks(got, prompts, image_index)
    assert 0 < float((got - ref).abs().max()) <= 0.02
    assert float((low - low_ref).abs().max()) <= 2e-3
    inter = ((low > 0) & (low_ref > 0)).sum().item()
    union = ((low > 0) | (low_ref > 0)).sum().item()
    assert union > 0 and inter / union >= 0.99


def test_key_names_encoder_and_precision(tmp_path):
    model = build_tiny_model(seed=0)
    keys = {cache_key(model, encoder=e, precision=p)[0] for e in ("fast", "model") for p in ("bf16", "fp32")}
    assert len(keys) == 4
    load = _images(model)
    for bad, match in (({"encoder": "slow"}, "encoder must be one of"), ({"precision": "fp8"}, "precision must be"),
                       ({"dtype": "int8"}, "dtype must be one of")):
        with pytest.raises(ValueError, match=match):
            EmbeddingCache.open_or_build(tmp_path, model, [1], load, **bad)


def test_fast_build_same_rows_when_the_model_already_runs_the_fast_encoder(tmp_path):
    from evf_sam.models.sam_encoder import FastImageEncoderViT, use_fast_sam_encoder

    model = build_tiny_model(seed=0, sam_encoder="reference")
    load = _images(model)
    a = EmbeddingCache.open_or_build(tmp_path / "a", model, [1, 2], load)
    use_fast_sam_encoder(model)  # fp32 fast encoder in the model: the cache derives its bf16 one from it
    assert isinstance(model.sam.image_encoder, FastImageEncoderViT)
    b = EmbeddingCache.open_or_build(tmp_path / "b", model, [1, 2], load)
    assert a.key == b.key and model.sam.image_encoder.compute_dtype is None  # the model's encoder is untouched
    assert np.array_equal(np.asarray(a.array), np.asarray(b.array))

"""Frozen SAM image-embedding cache: same values as the encoder, keyed by weights + preprocessing."""

from __future__ import annotations

import json

import numpy as np
import torch

from evf_sam.engine.embedding_cache import EmbeddingCache, cache_key
from evf_sam.testing import build_tiny_model


def _images(model):
    s = model.sam_image_size

    def load(i: int) -> torch.Tensor:
        return torch.randn(3, s, s, generator=torch.Generator().manual_seed(int(i)))

    return load


def test_cache_matches_encoder_and_is_reused(tmp_path):
    model = build_tiny_model(seed=0)
    load = _images(model)
    ids = [7, 3, 11, 5, 2]
    cache = EmbeddingCache.open_or_build(tmp_path, model, ids, load, batch_size=2, dtype="float32")
    with torch.no_grad():
        ref = model.encode_image(torch.stack([load(i) for i in [11, 2]]))
    got = cache.get([11, 2])
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    index = json.loads((cache.path / "index.json").read_text())
    assert index["complete"] and index["image_ids"] == sorted(ids)
    mtime = (cache.path / "embeddings.npy").stat().st_mtime_ns
    again = EmbeddingCache.open_or_build(tmp_path, model, ids[:3], load, dtype="float32")
    assert again.path == cache.path and (cache.path / "embeddings.npy").stat().st_mtime_ns == mtime

    f16 = EmbeddingCache.open_or_build(tmp_path, model, ids, load, dtype="float16")
    assert f16.path != cache.path and f16.array.dtype == np.float16
    torch.testing.assert_close(f16.get([11, 2]), ref, rtol=1e-2, atol=2e-3)  # fp16 storage tolerance


def test_rebuilt_when_sam_weights_or_preprocessing_change(tmp_path):
    model = build_tiny_model(seed=0)
    load = _images(model)
    first = EmbeddingCache.open_or_build(tmp_path, model, [1, 2], load, dtype="float32")
    key0, _ = cache_key(model, dtype="float32")
    assert first.key == key0
    with torch.no_grad():
        model.sam.image_encoder.neck[0].weight.add_(0.1)  # "new SAM weights"
    second = EmbeddingCache.open_or_build(tmp_path, model, [1, 2], load, dtype="float32")
    assert second.key != first.key and second.path != first.path
    with torch.no_grad():
        ref = model.encode_image(load(1)[None])
    torch.testing.assert_close(second.get([1]), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first.get([1]), second.get([1]))
    # other preprocessing parameters (e.g. pixel mean) -> another key
    model.sam.pixel_mean.add_(1.0)
    assert cache_key(model, dtype="float32")[0] != second.key
    # the encoder's other parts (prompt encoder, decoder) do not invalidate it
    model.sam.pixel_mean.sub_(1.0)
    with torch.no_grad():
        model.sam.mask_decoder.iou_token.weight.add_(1.0)
    assert cache_key(model, dtype="float32")[0] == second.key


def test_incomplete_build_is_never_read(tmp_path):
    model = build_tiny_model(seed=0)
    load = _images(model)
    key, _ = cache_key(model, dtype="float32")
    (tmp_path / f"{key}.tmp-deadbeef").mkdir()  # a crashed build
    bad = tmp_path / key
    bad.mkdir()
    (bad / "index.json").write_text(json.dumps({"complete": False}))  # not finalised
    cache = EmbeddingCache.open_or_build(tmp_path, model, [4], load, dtype="float32")
    assert cache.path == bad and json.loads((bad / "index.json").read_text())["complete"]
    assert len(cache) == 1 and 4 in cache

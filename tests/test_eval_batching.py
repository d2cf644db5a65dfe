"""Evaluation with several images per SAM encoder forward (evf_sam/engine/batched_eval.py): the same
masks and metrics as one image per forward, with and without loader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evf_sam.data.eval_dataset import build_eval_dataset
from evf_sam.data.synthetic import make_synthetic_refer, synthetic_sentences
from evf_sam.engine.batched_eval import EvalBatch, eval_loader, predict_batch
from evf_sam.engine.evaluate import evaluate

# batch N vs batch 1, fp32: low-res logits differ by float rounding only (measured 1.2e-7, |logits| <= 0.12)
LOGIT_ATOL = 1e-5


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from evf_sam.testing import build_tiny_model
    from evf_sam.tokenizer import load_tokenizer, train_sentencepiece

    tmp = tmp_path_factory.mktemp("evalbatch")
    make_synthetic_refer(tmp / "data", seed=3, num_train=1, num_val=5, num_test=1, image_size=64)
    tok = load_tokenizer(train_sentencepiece(synthetic_sentences(), tmp / "tok", vocab_size=64))
    model = build_tiny_model(seed=0, vocab_size=len(tok)).eval()
    ds = build_eval_dataset(tmp / "data", "refcoco", "unc", "val", sam_size=model.sam_image_size,
                            beit_size=model.beit_image_size)
    return {"tmp": tmp, "tok": tok, "model": model, "ds": ds}


def _logits(env, batch_size: int, num_workers: int = 0) -> dict[tuple[int, int], torch.Tensor]:
    """(image id, sent id) -> low-res logits (1, 4h, 4w), through eval_loader + predict_batch."""
    model = env["model"]
    out = {}
    sizes = []
    with torch.no_grad():
        for batch in eval_loader(env["ds"], batch_size=batch_size, num_workers=num_workers):
            assert isinstance(batch, EvalBatch) and batch.sam_images.shape[0] == len(batch)
            sizes.append(len(batch))
            low = predict_batch(model, env["tok"], batch, device="cpu", dtype=torch.float32, max_len=model.max_text_len)
            assert len(low) == len(batch)
            for it, lr in zip(batch.items, low, strict=True):
                assert it.sam_image is None and lr.shape[0] == len(it.sentences)
                for sid, x in zip(it.sent_ids, lr, strict=True):
                    out[(it.image_id, sid)] = x
    assert sum(sizes) == len(env["ds"]) and max(sizes) == min(batch_size, len(env["ds"]))
    return out


def test_batched_logits_match_batch_1(env):
    one = _logits(env, 1)
    for bs, workers in ((3, 0), (5, 1)):  # 5 images: batches 3 + 2; all 5 in one, read by a worker
        got = _logits(env, bs, workers)
        assert got.keys() == one.keys() and len(one) == env["ds"].num_expressions
        diff = max(float((got[k] - one[k]).abs().max()) for k in one)
        assert diff <= LOGIT_ATOL, (bs, workers, diff)


def test_batched_metrics_and_masks_equal_batch_1(env):
    model, tok, ds = env["model"], env["tok"], env["ds"]
    one = evaluate(model, tok, ds, progress=False, batch_size=1, save_masks_dir=env["tmp"] / "m1")
    three = evaluate(model, tok, ds, progress=False, batch_size=3, num_workers=1, save_masks_dir=env["tmp"] / "m3")
    assert one == three and one["n_images"] == 5 and one["n_expressions"] == ds.num_expressions
    files = sorted(p.name for p in (env["tmp"] / "m1").glob("*.png"))
    assert len(files) == ds.num_expressions
    assert files == sorted(p.name for p in (env["tmp"] / "m3").glob("*.png"))
    for name in files:  # every predicted pixel the same, so every intersection / union count too
        a = np.asarray(Image.open(env["tmp"] / "m1" / name))
        b = np.asarray(Image.open(env["tmp"] / "m3" / name))
        assert np.array_equal(a, b), name
    assert sum(int(np.asarray(Image.open(env["tmp"] / "m1" / n)).any()) for n in files) > 0  # not all empty


def test_bad_batch_size_is_rejected(env):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        eval_loader(env["ds"], batch_size=0)

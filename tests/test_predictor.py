"""EvfSamPredictor: one batched predict == N single-prompt calls == the official per-prompt pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evf_sam.models.evf_sam import EvfSam
from evf_sam.predictor import EvfSamPredictor, Prediction
from evf_sam.preprocess import beit3_preprocess, sam_preprocess
from evf_sam.testing import build_tiny_model, make_tokenizer, write_official_checkpoint
from evf_sam.tokenizer import load_tokenizer

PROMPTS = ["the big red circle on the left", "blue square", "the tiny green star below the small one"]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model() -> EvfSam:
    return build_tiny_model(seed=1)


@pytest.fixture(scope="module")
def predictor(model, tok_dir) -> EvfSamPredictor:
    return EvfSamPredictor(model, tokenizer=tok_dir)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 91, 3), dtype=np.uint8)


def test_prediction_shapes_and_dtypes(predictor, image):
    predictor.set_image(image)
    assert predictor.is_image_set and predictor.original_size == (37, 91) and predictor.input_size == (104, 256)
    out = predictor.predict(PROMPTS)
    assert isinstance(out, Prediction) and len(out) == 3 and out.prompts == PROMPTS
    assert out.masks.shape == (3, 37, 91) and out.masks.dtype == torch.bool
    assert out.logits.shape == (3, 37, 91) and out.logits.dtype == torch.float32
    assert out.scores.shape == (3,) and out.scores.dtype == torch.float32
    assert all(t.device.type == "cpu" for t in (out.masks, out.logits, out.scores))
    assert torch.equal(out.masks, out.logits > 0)
    assert torch.isfinite(out.logits).all()
    assert 0 < out.masks.sum() < out.masks.numel()  # not degenerate, so the comparisons below mean something


def test_batch_equals_single_prompt_calls(predictor, image):
    predictor.set_image(image)
    batched = predictor.predict(PROMPTS)
    for i, p in enumerate(PROMPTS):
        single = predictor.predict(p)
        assert single.prompts == [p]
        torch.testing.assert_close(batched.logits[i], single.logits[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.scores[i], single.scores[0], rtol=1e-4, atol=1e-5)
        # masks agree except where the logit is within round-off of 0
        differ = batched.masks[i] != single.masks[0]
        assert (single.logits[0][differ].abs() < 1e-4).all()


def test_equals_official_per_prompt_pipeline(model, tok_dir, predictor, image):
    """The official inference.py flow for one prompt, written out with the model's stages."""
    tok = load_tokenizer(tok_dir)
    p = PROMPTS[2]
    sam_x, resize_shape = sam_preprocess(image, model.sam_image_size)
    beit_x = beit3_preprocess(image, model.beit_image_size)
    ids = tok(p, return_tensors="pt")["input_ids"]  # <s> ... </s>, no padding
    with torch.inference_mode():
        emb = model.encode_image(sam_x[None])
        prompt = model.encode_prompts(beit_x[None], ids, torch.zeros_like(ids, dtype=torch.bool))
        low_res, iou = model.decode_masks(emb, prompt, multimask_output=False)
        want = model.sam.postprocess_masks(low_res, resize_shape, image.shape[:2])[:, 0]
    predictor.set_image(image)
    got = predictor.predict(p)
    torch.testing.assert_close(got.logits, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.scores, iou[:, 0], rtol=1e-5, atol=1e-6)


def test_text_is_stripped_not_lowercased(predictor, image):
    predictor.set_image(image)
    a = predictor.predict(["  Blue Square  ", "blue square"])
    b = predictor.predict("Blue Square")
    torch.testing.assert_close(a.logits[0], b.logits[0], rtol=1e-4, atol=1e-5)
    assert a.prompts[0] == "Blue Square"


def test_multimask_keeps_best(predictor, image):
    predictor.set_image(image)
    out = predictor.predict(PROMPTS[:2], multimask_output=True)
    assert out.masks.shape == (2, 37, 91) and out.scores.shape == (2,)


def test_errors(model, tok_dir, image):
    pred = EvfSamPredictor(model, tokenizer=tok_dir)
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict("x")
    pred.set_image(image)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pred.predict(["ok", "   "])
    with pytest.raises(ValueError, match="at least one prompt"):
        pred.predict([])
    with pytest.raises(ValueError, match="tokenizer"):
        EvfSamPredictor(build_tiny_model(seed=1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model(tmp_path, model, tok_dir, image, dtype):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir, dtype=torch.float32, fmt="safetensors")
    pred = EvfSamPredictor.from_pretrained(ckpt, dtype=dtype)
    assert pred.model.dtype == dtype
    pred.set_image(image)
    out = pred.predict(PROMPTS)
    assert out.logits.dtype == torch.float32 and out.scores.dtype == torch.float32 and out.masks.dtype == torch.bool
    assert out.logits.shape == (3, 37, 91) and torch.isfinite(out.logits).all()
    ref = EvfSamPredictor(model, tokenizer=tok_dir)
    ref.set_image(image)
    want = ref.predict(PROMPTS)
    scale = want.logits.abs().max()
    assert (out.logits - want.logits).abs().max() < 0.1 * scale  # same model, lower precision


def test_from_pretrained_reads_the_tokenizer_beside_the_weights(tmp_path, model, tok_dir, image):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir)  # fp16 pytorch_model.bin, official
    pred = EvfSamPredictor.from_pretrained(ckpt)
    pred.set_image(image)
    out = pred.predict(PROMPTS[0])
    assert out.masks.shape == (1, 37, 91)


def test_tokenizer_found_beside_the_weights_the_model_came_from(tmp_path, model, tok_dir, image):
    ckpt = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir, fmt="safetensors")
    loaded = EvfSam.from_pretrained(ckpt)
    assert loaded.source_dir == ckpt  # recorded by from_pretrained: where the tokenizer files are
    pred = EvfSamPredictor(loaded)  # no tokenizer given: read from the checkpoint directory
    pred.set_image(image)
    assert pred.predict(PROMPTS[1]).masks.shape == (1, 37, 91)

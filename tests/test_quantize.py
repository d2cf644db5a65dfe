"""Quantized prompt side (BEiT-3 + projector), SAM kept: what is converted, that it is really low precision,
and that the masks stay close to fp32.

IoU thresholds (per prompt, 16 prompts on one toy image), from measurements on toy EVF-SAMs (seeds 0-3):
int8 (torch dynamic, per-channel) mean 0.998-0.999 / min 0.994; bitsandbytes LLM.int8 0.999 / 0.996;
bf16 linears 0.9994-0.9999 / 0.998; NF4 (4-bit, 16 levels per 64-weight block) 0.976-0.997 / 0.969.
So: min >= 0.99 for the 8- and 16-bit modes, mean >= 0.97 and min >= 0.95 for NF4.
"""

from __future__ import annotations

import copy

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

from evf_sam.predictor import EvfSamPredictor
from evf_sam.quantize import LowPrecisionLinear, quantize_prompt_encoder, quantized_layers
from evf_sam.testing import TINY_SENTENCES, build_tiny_model, make_tokenizer

THRESHOLDS = {"int8": (0.99, 0.99), "bnb-int8": (0.99, 0.99), "bf16": (0.99, 0.99), "bnb-nf4": (0.97, 0.95)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = make_tokenizer(tmp_path_factory.mktemp("tok"))
    model = build_tiny_model(seed=0, vocab_size=1000)
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    prompts = list(TINY_SENTENCES[::97][:16])
    pred = EvfSamPredictor(model, tokenizer=tok)
    pred.set_image(image)
    return model, tok, image, prompts, pred.predict(prompts)


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and n.split(".")[0] in ("encoder", "projector")]


@pytest.mark.parametrize("mode", list(THRESHOLDS))
def test_quantized_masks_agree_with_fp32(setup, mode):
    model, tok, image, prompts, want = setup
    q = copy.deepcopy(model)
    expected = _linear_names(q)
    sam_before = {k: v.clone() for k, v in q.sam.state_dict().items()}
    names = quantize_prompt_encoder(q, mode)
    assert names == expected and len(names) == 26  # every Linear of BEiT-3 (tiny: 2 layers) + the projector's 2
    assert quantized_layers(q) == {n: mode for n in names}
    sam_after = q.sam.state_dict()  # SAM kept: same tensors, same dtype
    assert all(torch.equal(sam_after[k], v) and sam_after[k].dtype == v.dtype for k, v in sam_before.items())
    pred = EvfSamPredictor(q, tokenizer=tok)
    pred.set_image(image)
    got = pred.predict(prompts)
    ious = [((a & b).sum() / (a | b).sum()).item() for a, b in zip(want.masks, got.masks)]
    mean_min, min_min = THRESHOLDS[mode]
    assert np.mean(ious) >= mean_min and min(ious) >= min_min, ious
    assert not torch.equal(got.logits, want.logits)  # the arithmetic did change


def test_layers_are_really_low_precision(setup):
    model = setup[0]
    layer = "encoder.encoder.layers.0.ffn.A.fc1"  # 64 -> 256 in beit3_tiny
    d_in, d_out = model.get_submodule(layer).in_features, model.get_submodule(layer).out_features

    q = copy.deepcopy(model)
    quantize_prompt_encoder(q, "int8")
    m = q.get_submodule(layer)
    assert isinstance(m, DynamicQuantLinear) and m.weight().dtype == torch.qint8
    assert m.weight().qscheme() == torch.per_channel_affine and m.weight().q_per_channel_scales().numel() == d_out

    q = copy.deepcopy(model)
    quantize_prompt_encoder(q, "bnb-int8")
    m = q.get_submodule(layer)
    assert isinstance(m, bnb.nn.Linear8bitLt) and m.weight.dtype == torch.int8 and m.weight.shape == (d_out, d_in)
    assert m.state.threshold == 6.0  # transformers' llm_int8_threshold default, as the official --load_in_8bit

    q = copy.deepcopy(model)
    quantize_prompt_encoder(q, "bnb-nf4")
    m = q.get_submodule(layer)
    assert isinstance(m, bnb.nn.Linear4bit) and m.weight.dtype == torch.uint8
    assert m.weight.numel() == d_in * d_out // 2  # two 4-bit codes per byte
    assert m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested  # double quantization

    q = copy.deepcopy(model)
    quantize_prompt_encoder(q, "bf16")
    m = q.get_submodule(layer)
    assert type(m) is LowPrecisionLinear and m.weight.dtype == m.bias.dtype == torch.bfloat16
    x = torch.randn(3, d_in)
    out = m(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, nn.functional.linear(x.bfloat16(), m.weight, m.bias).float())
    # the rest of the prompt side keeps float32: embeddings, convolution, LayerNorms
    assert q.encoder.text_embed.weight.dtype == q.encoder.vision_embed.proj.weight.dtype == torch.float32
    assert q.get_submodule("encoder.encoder.layers.0.ffn.A.ffn_layernorm").weight.dtype == torch.float32
    assert q.dtype == torch.float32  # EvfSam.dtype follows SAM, so inputs stay float32


def test_bad_use_raises(setup):
    model = setup[0]
    q = copy.deepcopy(model)
    with pytest.raises(ValueError, match="unknown quantization mode 'int4'"):
        quantize_prompt_encoder(q, "int4")
    with pytest.raises(ValueError, match="eval"):
        quantize_prompt_encoder(copy.deepcopy(model).train(), "int8")
    with pytest.raises(ValueError, match="float32 model"):
        quantize_prompt_encoder(copy.deepcopy(model).to(torch.bfloat16), "int8")
    quantize_prompt_encoder(q, "bnb-int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize_prompt_encoder(q, "int8")
    with pytest.raises(TypeError, match="EvfSam"):
        quantize_prompt_encoder(nn.Sequential(nn.Linear(2, 2)).eval(), "int8")

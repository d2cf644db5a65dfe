"""Official EVF-SAM checkpoint directories: loading (bin / safetensors / sharded, fp16), strict errors,
config vs weights, save_pretrained round trip, training initialisation from SAM / BEiT-3 .pth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from evf_sam.models import checkpoint as ckpt
from evf_sam.models.checkpoint import (
    StateDictMismatchError,
    config_from_official,
    official_config,
    official_state_dict,
    write_checkpoint_dir,
)
from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam
from evf_sam.testing import build_tiny_model, make_tokenizer, tiny_inputs, write_official_checkpoint
from evf_sam.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model() -> EvfSam:
    return build_tiny_model(seed=3)


def _outputs(m: EvfSam, seed: int = 0):
    x = tiny_inputs(m, n_images=2, n_prompts=3, seed=seed)
    with torch.no_grad():
        return m(**x)


def _fp16_roundtrip(m: EvfSam) -> EvfSam:
    """The source model with every weight cast to fp16 and back: what an fp16 file can hold."""
    ref = build_tiny_model(seed=3)
    ref.load_state_dict({k: v.half().float() for k, v in m.state_dict().items()})
    return ref


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "sharded", "sharded_safetensors"])
def test_official_dir_loads_and_matches(tmp_path, model, tok_dir, fmt):
    d = write_official_checkpoint(tmp_path / "evf", model, tok_dir, dtype=torch.float16, fmt=fmt)
    files = sorted(p.name for p in d.iterdir())
    assert "config.json" in files and "sentencepiece.bpe.model" in files
    expect = {"bin": "pytorch_model.bin", "safetensors": "model.safetensors",
              "sharded": "pytorch_model.bin.index.json", "sharded_safetensors": "model.safetensors.index.json"}[fmt]
    assert expect in files
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["architectures"] == ["EvfSamModel"] and cfg["model_type"] == "evf"
    assert cfg["torch_dtype"] == "float16" and cfg["hidden_size"] == 64 and cfg["out_dim"] == 32

    loaded = EvfSam.from_pretrained(d)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert not any(p.requires_grad for p in loaded.sam.image_encoder.parameters())
    out, ref = _outputs(loaded), _outputs(_fp16_roundtrip(model))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert loaded.sam.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])


def test_official_bin_has_official_names(tmp_path, model, tok_dir):
    d = write_official_checkpoint(tmp_path / "evf", model, tok_dir)
    state = torch.load(d / "pytorch_model.bin", weights_only=True)
    prefixes = ("visual_model.", "mm_extractor.beit3.", "text_hidden_fcs.0.0.", "text_hidden_fcs.0.2.")
    assert all(k.startswith(prefixes) for k in state)
    assert {"text_hidden_fcs.0.0.weight", "text_hidden_fcs.0.2.bias", "mm_extractor.beit3.text_embed.weight",
            "visual_model.prompt_encoder.no_mask_embed.weight"} <= set(state)
    assert not any("pixel_mean" in k for k in state)
    assert {v.dtype for v in state.values()} == {torch.float16}


def test_load_in_other_dtype(tmp_path, model, tok_dir):
    d = write_official_checkpoint(tmp_path / "evf", model, tok_dir, dtype=torch.bfloat16, fmt="safetensors")
    m = EvfSam.from_pretrained(d, dtype=torch.bfloat16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert torch.equal(m.projector.fc1.weight, model.projector.fc1.weight.to(torch.bfloat16))


def test_save_pretrained_round_trip_is_exact(tmp_path, model, tok_dir):
    d = model.save_pretrained(tmp_path / "out", tokenizer_dir=tok_dir)
    assert (d / "model.safetensors").is_file() and not (d / "pytorch_model.bin").exists()
    loaded = EvfSam.from_pretrained(d)
    assert loaded.config == model.config
    assert list(model.state_dict()) == list(loaded.state_dict())  # zip alone would hide a missing tensor
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model), _outputs(loaded)))
    tok = load_tokenizer(d)  # the predictor loads the tokenizer from the same directory
    assert tok.convert_tokens_to_ids("<pad>") == 1
    # saving again over an existing checkpoint replaces it atomically
    model.save_pretrained(d, tokenizer_dir=tok_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_pretrained_is_atomic(tmp_path, model, tok_dir, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "_write_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "out", tokenizer_dir=tok_dir)
    assert list(tmp_path.iterdir()) == []  # no half-written dir, no temp dir
    other = tmp_path / "not_a_checkpoint"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="not an EVF-SAM checkpoint"):
        model.save_pretrained(other, tokenizer_dir=tok_dir)
    assert (other / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------
# Strict errors name the tensors (official names)


def _write(tmp_path, model, tok_dir, *, state=None, config=None, fmt="bin") -> Path:
    state = official_state_dict(model, torch.float16) if state is None else state
    config = official_config(model, torch.float16) if config is None else config
    return write_checkpoint_dir(tmp_path / "evf", config=config, state=state, tokenizer_dir=tok_dir, fmt=fmt)


def test_missing_tensor_is_named(tmp_path, model, tok_dir):
    state = official_state_dict(model, torch.float16)
    del state["visual_model.mask_decoder.iou_token.weight"]
    d = _write(tmp_path, model, tok_dir, state=state)
    with pytest.raises(StateDictMismatchError, match=r"missing tensors \(1\): visual_model\.mask_decoder\.iou_token"):
        EvfSam.from_pretrained(d)


def test_misshaped_and_unexpected_tensors_are_named(tmp_path, model, tok_dir):
    state = official_state_dict(model, torch.float16)
    state["text_hidden_fcs.0.2.bias"] = torch.zeros(31, dtype=torch.float16)
    state["text_hidden_fcs.1.weight"] = torch.zeros(2, dtype=torch.float16)
    d = _write(tmp_path, model, tok_dir, state=state, fmt="safetensors")
    with pytest.raises(StateDictMismatchError) as e:
        EvfSam.from_pretrained(d)
    msg = str(e.value)
    assert "shape mismatch text_hidden_fcs.0.2.bias: file has (31,), model expects (32,)" in msg
    assert "unexpected tensors (1): text_hidden_fcs.1.weight" in msg
    assert e.value.mismatched == [("text_hidden_fcs.0.2.bias", (31,), (32,))]


def test_missing_shard_tensor_is_named(tmp_path, model, tok_dir):
    d = _write(tmp_path, model, tok_dir, fmt="sharded")
    index = json.loads((d / "pytorch_model.bin.index.json").read_text())
    index["weight_map"]["visual_model.extra.weight"] = "pytorch_model-00001-of-00002.bin"
    (d / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(StateDictMismatchError, match="visual_model.extra.weight"):
        EvfSam.from_pretrained(d)


def test_config_says_large_but_weights_are_tiny(tmp_path, model, tok_dir):
    cfg = official_config(model, torch.float16)
    for k in ("sam_variant", "encoder", "encoder_overrides"):
        del cfg[k]  # a pure official config.json
    cfg.update(sam_scale="huge", mm_extractor_scale="large", hidden_size=64)
    d = _write(tmp_path, model, tok_dir, config=cfg)
    with pytest.raises(ValueError, match=r"mm_extractor_scale='large' -> beit3_large .*weights have embed_dim 64, "
                                         r"2 layers \(looks like beit3_tiny\)") as e:
        EvfSam.from_pretrained(d)
    assert "sam_scale='huge' -> vit_h" in str(e.value)


def test_config_fields_disagree_with_weights(tmp_path, model, tok_dir):
    cfg = official_config(model, torch.float16)
    cfg["encoder_overrides"] = {"depth": 3}
    d = _write(tmp_path, model, tok_dir, config=cfg)
    with pytest.raises(ValueError, match="3 layers\\), but the weights have embed_dim 64, 2 layers"):
        EvfSam.from_pretrained(d)
    cfg = official_config(model, torch.float16)
    cfg["hidden_size"] = 768
    d = _write(tmp_path / "b", model, tok_dir, config=cfg)
    with pytest.raises(ValueError, match="hidden_size=768, but the BEiT-3 weights have embed_dim 64"):
        EvfSam.from_pretrained(d)
    cfg = official_config(model, torch.float16)
    cfg["sam_scale"] = "base"  # official field says vit_b, ours says tiny
    d = _write(tmp_path / "c", model, tok_dir, config=cfg)
    with pytest.raises(ValueError, match="sam_scale='base' \\(= vit_b\\) disagrees with sam_variant='tiny'"):
        EvfSam.from_pretrained(d)


def test_architecture_must_match_sam_family(tmp_path):
    from evf_sam.models.checkpoint import config_from_official

    base = {"model_type": "evf", "mm_extractor_scale": "large"}
    with pytest.raises(ValueError, match="sam_variant='tiny' is a sam model \\(EvfSamModel\\)"):
        config_from_official({**base, "architectures": ["EvfSam2Model"], "sam_variant": "tiny"})
    with pytest.raises(ValueError, match="sam_scale='huge' is not one of 'large', 'tiny'"):
        config_from_official({**base, "architectures": ["EvfSam2Model"], "sam_scale": "huge"})
    with pytest.raises(ValueError, match="architectures=\\['LlavaModel'\\]; expected one of"):
        config_from_official({**base, "architectures": ["LlavaModel"], "sam_scale": "huge"})
    assert config_from_official({**base, "architectures": ["EvfSam2Model"], "sam_scale": "large"}).sam_variant \
        == "sam2_hiera_l"
    assert config_from_official({**base, "architectures": ["EvfEffiSamModel"], "sam_scale": "small"}).sam_variant \
        == "efficient_sam_s"
    assert config_from_official({**base, "architectures": ["EvfSamModel"], "sam_scale": "huge"}).sam_variant == "vit_h"


def test_missing_paths(tmp_path, model, tok_dir):
    with pytest.raises(FileNotFoundError, match="nowhere.*config.json"):
        EvfSam.from_pretrained(tmp_path / "nowhere")
    d = _write(tmp_path, model, tok_dir)
    (d / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors, pytorch_model.bin"):
        EvfSam.from_pretrained(d)
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        EvfSam.from_pretrained(d)


def test_config_mapping():
    official = {"architectures": ["EvfSamModel"], "model_type": "evf", "sam_scale": "huge",
                "mm_extractor_scale": "base", "hidden_size": 768, "out_dim": 256, "torch_dtype": "float16"}
    c = config_from_official(official)
    assert (c.sam_variant, c.encoder, c.encoder_overrides, c.multimask_output) == ("vit_h", "beit3_base", {}, False)
    with torch.device("meta"):
        m = build_evf_sam(EvfSamConfig(sam_variant="vit_h", encoder="beit3_large"))
    cfg = official_config(m, torch.float16)
    assert {k: cfg[k] for k in ("architectures", "model_type", "sam_scale", "mm_extractor_scale", "hidden_size",
                                "out_dim", "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype")} == {
        "architectures": ["EvfSamModel"], "model_type": "evf", "sam_scale": "huge", "mm_extractor_scale": "large",
        "hidden_size": 1024, "out_dim": 256, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        "torch_dtype": "float16"}
    with pytest.raises(ValueError, match="sam_scale='giant'"):
        config_from_official({**official, "sam_scale": "giant"})


# ---------------------------------------------------------------------------------------------
# Training initialisation from segment-anything and BEiT-3 .pth files


def test_build_from_sam_and_beit3_pth(tmp_path, model):
    sam_pth, beit_pth = tmp_path / "sam_tiny.pth", tmp_path / "beit3_tiny.pth"
    torch.save(model.sam.state_dict(), sam_pth)
    torch.save({"model": {"beit3." + k: v for k, v in model.encoder.state_dict().items()}}, beit_pth)
    m = build_evf_sam(model.config, sam_checkpoint=sam_pth, encoder_checkpoint=beit_pth)
    for k, v in model.sam.state_dict().items():
        assert torch.equal(m.sam.state_dict()[k], v), k
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(m.encoder.state_dict()[k], v), k
    assert not any(p.requires_grad for p in m.sam.image_encoder.parameters())

    sd = model.sam.state_dict()
    del sd["mask_decoder.iou_token.weight"]
    sd["image_encoder.pos_embed"] = sd["image_encoder.pos_embed"][:, :8]
    torch.save(sd, sam_pth)
    with pytest.raises(StateDictMismatchError) as e:
        build_evf_sam(model.config, sam_checkpoint=sam_pth)
    assert "mask_decoder.iou_token.weight" in str(e.value) and "image_encoder.pos_embed" in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_evf_sam(model.config, sam_checkpoint=tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="BEiT-3 checkpoint not found"):
        build_evf_sam(model.config, encoder_checkpoint=tmp_path / "missing_beit.pth")
    assert os.path.exists(beit_pth)


@pytest.mark.parametrize("encoder, fusion", [("clip_tiny", "late"), ("vilt_tiny", "early")])
def test_transformers_encoders_round_trip(tmp_path, encoder, fusion):
    """CLIP / ViLT keep ``position_ids`` (and ViLT ``token_type_ids``) as non-persistent buffers that
    save_pretrained never writes; loading must rebuild them, not fail (Tab. 1/3 rows save and reload)."""
    torch.manual_seed(0)
    model = build_evf_sam(EvfSamConfig(sam_variant="tiny", encoder=encoder, fusion=fusion)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    again = EvfSam.from_pretrained(tmp_path / "ckpt")
    before, after = model.state_dict(), again.state_dict()
    assert list(before) == list(after)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    buffers = {n: b for n, b in again.named_buffers() if n.endswith(("position_ids", "token_type_ids"))}
    assert buffers, "the encoder should hold its embeddings' index buffers"
    for name, buf in buffers.items():
        expected = torch.zeros_like(buf) if name.endswith("token_type_ids") else torch.arange(buf.shape[-1]).expand_as(buf)
        assert torch.equal(buf, expected), name

"""Model construction from the training config (no training loop)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from evf_sam.config import typed
from evf_sam.engine.build import build_model_and_tokenizer

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("train", overrides=["model=tiny", "data=random", f"run_dir={tmp_path}", *overrides])


@pytest.mark.parametrize("flag", [False, True])
def test_grad_checkpointing_flag_reaches_the_encoder(tmp_path, flag):
    cfg = _cfg(tmp_path, f"model.grad_checkpointing={str(flag).lower()}")
    model, tokenizer, tok_dir = build_model_and_tokenizer(typed(cfg.model), tmp_path)
    assert model.encoder.grad_checkpointing is flag
    assert (tok_dir / "sentencepiece.bpe.model").is_file()
    assert model.encoder.config.vocab_size == len(tokenizer)
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())


def test_init_from_loads_an_export_and_keeps_sam_encoder_frozen(tmp_path):
    cfg = _cfg(tmp_path / "a")
    model, _, tok_dir = build_model_and_tokenizer(typed(cfg.model), tmp_path / "a")
    export = model.save_pretrained(tmp_path / "export", tokenizer_dir=tok_dir)
    cfg2 = _cfg(tmp_path / "b", f"+model.init_from={export}", f"model.tokenizer={export}")
    again, _, _ = build_model_and_tokenizer(typed(cfg2.model), tmp_path / "b")
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert a.equal(b), k
    assert not any(p.requires_grad for p in again.sam.image_encoder.parameters())

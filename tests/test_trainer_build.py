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
    before, after = model.state_dict(), again.state_dict()
    assert list(after) == list(before)  # same tensors, same order: none missing, none extra
    for k, a in before.items():
        assert after[k].dtype == a.dtype and after[k].equal(a), k
    assert not any(p.requires_grad for p in again.sam.image_encoder.parameters())


# -- the config schemas (evf_sam/config.py) -----------------------------------------------------------

def _compose_raw(*overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("override,key,words", [
    ("trainer.total_steps=abc", "trainer.total_steps", "Integer"),
    ("data.sources.refcoco.rate=high", "data.sources.refcoco.rate", "Float"),
    ("optim.betas=fast", "optim.betas", ""),
    ("trainer.totl_steps=5", "trainer.totl_steps", ""),
])
def test_wrong_type_or_key_fails_at_composition_naming_it(override, key, words):
    with pytest.raises(Exception) as err:
        _compose_raw("model=tiny", override)
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    text = "\n".join(chain)
    assert key in text and words in text, text


def test_added_key_the_schema_lacks_is_an_error_when_typed():
    from evf_sam.config import TrainerConfig

    cfg = _compose_raw("model=tiny", "data=random", "+trainer.foo=1")
    with pytest.raises(ValueError, match=r"trainer: unknown key\(s\) \['foo'\] for TrainerConfig"):
        typed(cfg.trainer)
    t = typed(_compose_raw("model=tiny", "data=random", "trainer=tiny").trainer)
    assert isinstance(t, TrainerConfig) and t.total_steps == 20 and t.loss.bce_weight == 1.0


def test_encoder_comes_from_the_encoder_group():
    from evf_sam.engine.build import check_encoder_choice

    for model, encoder in (("tiny", "beit3_tiny"), ("evf_sam_base", "beit3_base"), ("evf_sam_large", "beit3_large")):
        cfg = _compose_raw(f"model={model}")
        assert cfg.model.encoder == cfg.encoder.name == encoder
        check_encoder_choice(cfg)
    cfg = _compose_raw("+experiment=quickstart")
    assert cfg.model.encoder == cfg.encoder.name == "beit3_tiny"
    cfg = _compose_raw("model=tiny", "encoder=beit3_base")  # an explicit choice is honoured, not ignored
    assert cfg.model.encoder == cfg.encoder.name == "beit3_base"
    with pytest.raises(ValueError, match="choose the encoder with encoder=<name>"):
        check_encoder_choice(_compose_raw("model=tiny", "model.encoder=beit3_base"))

"""Our tokenizer gives the official ids: transformers 4's slow XLMRobertaTokenizer (what the official
inference.py / eval.py load) on a unigram and a BPE sentencepiece model, with the multitask ``[semantic]``
added token. Expected ids: tests/fixtures/official/tokenizer_parity.json, written by
scripts/make_official_goldens.py in the official environment."""

from __future__ import annotations

import hashlib
import json
import lzma
from pathlib import Path

import pytest

from evf_sam.tokenizer import SEMANTIC_TOKEN, XlmrTokenizer, load_tokenizer, tokenize, write_tokenizer_dir

FIXTURES = Path(__file__).parent / "fixtures" / "official"
GOLDEN = json.loads((FIXTURES / "tokenizer_parity.json").read_text())
MODEL_TYPES = ("unigram", "bpe")


@pytest.fixture(scope="module", params=MODEL_TYPES)
def case(request, tmp_path_factory):
    meta = GOLDEN["models"][request.param]
    raw = lzma.decompress((FIXTURES / meta["file"]).read_bytes())
    assert hashlib.sha256(raw).hexdigest() == meta["sha256"]
    d = write_tokenizer_dir(tmp_path_factory.mktemp(request.param), raw, meta["added_tokens"])
    return request.param, meta, d


def test_fixture_models_are_what_they_say():
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    for model_type in MODEL_TYPES:
        proto = pb.ModelProto()
        proto.ParseFromString(lzma.decompress((FIXTURES / GOLDEN["models"][model_type]["file"]).read_bytes()))
        assert pb.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower() == model_type
        assert proto.normalizer_spec.name == "nmt_nfkc"  # XLM-R's normaliser (tabs, full-width, ...)
    assert len(GOLDEN["strings"]) >= 30 and spm.__version__


def test_ids_equal_the_slow_transformers4_tokenizer(case):
    model_type, meta, d = case
    tok = load_tokenizer(d)
    assert isinstance(tok, XlmrTokenizer)
    assert len(tok) == meta["len"] and tok.mask_token_id == meta["mask_id"]
    assert tok.get_added_vocab() == meta["added_tokens"] == {SEMANTIC_TOKEN: meta["len"] - 1}
    wrong = []
    for s, pieces, ids in zip(GOLDEN["strings"], meta["pieces"], meta["ids"]):
        if tok(s)["input_ids"] != ids or tok.tokenize(s) != pieces:
            wrong.append((s, tok(s)["input_ids"], ids))
    assert not wrong, f"{model_type}: {len(wrong)}/{len(GOLDEN['strings'])} strings differ: {wrong[:5]}"


def test_batch_tokenize_uses_the_same_ids(case):
    _, meta, d = case
    tok = load_tokenizer(d)
    strings = [s for s in GOLDEN["strings"] if s.strip()]
    ids, pad = tokenize(tok, strings, max_length=512)
    for i, s in enumerate(strings):
        want = meta["ids"][GOLDEN["strings"].index(s)]
        assert ids[i, :len(want)].tolist() == want and not pad[i, :len(want)].any() and pad[i, len(want):].all()


def test_bpe_is_not_the_unigram_conversion():
    """The case the issue reported: on a BPE model a Unigram re-interpretation gives other ids."""
    bpe = GOLDEN["models"]["bpe"]
    i = GOLDEN["strings"].index("the thing")
    assert bpe["pieces"][i] == ["▁the", "▁t", "hing"]  # BPE merges, not the unigram segmentation
    assert sum(a != b for a, b in zip(GOLDEN["models"]["unigram"]["ids"], bpe["ids"])) > 20


def test_a_perturbed_tokenizer_fails(case, tmp_path):
    """The comparison is sharp: the same model with one id shifted (added token one later) differs."""
    model_type, meta, d = case
    tok = XlmrTokenizer(d / "sentencepiece.bpe.model")  # without added_tokens.json: [semantic] is split
    i = GOLDEN["strings"].index("[semantic] wall")
    assert tok("[semantic] wall")["input_ids"] != meta["ids"][i]

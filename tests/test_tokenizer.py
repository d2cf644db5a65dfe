"""XLM-R sentencepiece tokenizer: ids, padding, truncation, errors, the official file layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evf_sam.testing import TINY_SENTENCES, make_tokenizer
from evf_sam.tokenizer import SPECIAL_IDS, XlmrTokenizer, load_tokenizer, tokenize, train_sentencepiece


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def test_official_layout_and_xlmr_ids(tok_dir, tok):
    import sentencepiece as spm

    assert {p.name for p in tok_dir.iterdir()} == {"sentencepiece.bpe.model", "tokenizer_config.json",
                                                   "special_tokens_map.json"}
    assert isinstance(tok, XlmrTokenizer)
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / "sentencepiece.bpe.model"))
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]  # XLM-R's spm layout
    assert len(tok) == sp.get_piece_size() + 2  # fairseq offset 1 + <mask> at the end
    assert tok.convert_ids_to_tokens(len(tok) - 1) == "<mask>"
    for s in list(TINY_SENTENCES[::37]) + ["a purple star next to the big one", "the Red Circle"]:
        fairseq = [3 if i == sp.unk_id() else i + 1 for i in sp.encode(s)]  # spm id k -> k + 1, <unk> -> 3
        assert tok(s, add_special_tokens=False)["input_ids"] == fairseq, s


def test_tokenize_ids_and_padding(tok):
    ids, pad = tokenize(tok, ["the red circle on the left", "star"], max_length=64)
    assert ids.dtype == torch.long and pad.dtype == torch.bool and ids.shape == pad.shape
    body0 = tok("the red circle on the left", add_special_tokens=False)["input_ids"]
    body1 = tok("star", add_special_tokens=False)["input_ids"]
    t = len(body0) + 2
    assert ids.shape == (2, t)
    assert ids[0].tolist() == [0, *body0, 2]  # <s> ... </s>
    assert ids[1].tolist() == [0, *body1, 2] + [1] * (t - len(body1) - 2)  # right padding with <pad>
    assert pad[0].tolist() == [False] * t
    assert pad[1].tolist() == [False] * (len(body1) + 2) + [True] * (t - len(body1) - 2)
    assert torch.equal(pad, ids == 1)


def test_truncation_warns_and_keeps_eos(tok):
    long = "the big red circle on the left next to the small blue square at the top"
    with pytest.warns(UserWarning, match="prompt 1 has .* truncated to max_length=6"):
        ids, pad = tokenize(tok, ["star", long], max_length=6)
    assert ids.shape == (2, 6)
    assert ids[1, 0] == 0 and ids[1, -1] == 2 and not pad[1].any()
    full = tok(long, add_special_tokens=False)["input_ids"]
    assert ids[1, 1:5].tolist() == full[:4]


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_prompt_is_an_error(tok, bad):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        tokenize(tok, ["star", bad, "circle"], max_length=16)


def test_single_string_and_errors(tok, tmp_path):
    ids, pad = tokenize(tok, "star", max_length=16)
    assert ids.shape[0] == 1
    with pytest.raises(ValueError, match="no prompts"):
        tokenize(tok, [], max_length=16)
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="sentencepiece.bpe.model"):
        load_tokenizer(tmp_path / "empty")


def test_train_sentencepiece_is_deterministic(tmp_path, tok_dir):
    d = train_sentencepiece(TINY_SENTENCES, tmp_path / "again", vocab_size=128)
    assert (d / "sentencepiece.bpe.model").read_bytes() == (tok_dir / "sentencepiece.bpe.model").read_bytes()
    with pytest.raises(ValueError, match="non-empty"):
        train_sentencepiece(["", " "], tmp_path / "x", vocab_size=32)


def test_unknown_pieces_mask_and_vocab(tok):
    # a character the tiny model never saw is one unknown piece -> <unk> = 3 (sentencepiece id 0)
    pieces = tok.tokenize("red \u2603 circle")
    assert "\u2603" in pieces
    assert tok.convert_tokens_to_ids(pieces)[pieces.index("\u2603")] == 3
    mask = len(tok) - 1
    assert tok.mask_token_id == mask and tok.convert_tokens_to_ids("<mask>") == mask
    # <mask> is kept whole and eats the whitespace on its left (AddedToken(lstrip=True)), not on its right
    assert tok.tokenize("red  \t<mask> circle") == [*tok.tokenize("red"), "<mask>", *tok.tokenize(" circle")]
    assert tok("red <s> circle")["input_ids"] == [0, *tok("red", add_special_tokens=False)["input_ids"], 0,
                                                  *tok("circle", add_special_tokens=False)["input_ids"], 2]
    vocab = tok.get_vocab()
    assert len(vocab) == len(tok) and vocab["<pad>"] == 1 and tok.get_added_vocab() == {}
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    with pytest.raises(IndexError, match="out of range"):
        tok.convert_ids_to_tokens(len(tok))


def test_bad_spm_layout_is_refused(tmp_path):
    import sentencepiece as spm

    buf = __import__("io").BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TINY_SENTENCES), model_writer=buf, vocab_size=60,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2)  # <unk>=0, <s>=1, </s>=2 ...
    d = tmp_path / "tok"
    d.mkdir()
    (d / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    assert isinstance(load_tokenizer(d), XlmrTokenizer)
    buf = __import__("io").BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TINY_SENTENCES), model_writer=buf, vocab_size=60,
                                   hard_vocab_limit=False, num_threads=1, minloglevel=2, pad_id=0, unk_id=3)
    (d / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="XLM-R tokenizer needs"):
        load_tokenizer(d)


def test_return_tensors_like_the_official_call(tok):
    ids = tok("the red circle", return_tensors="pt")["input_ids"]  # official inference.py
    assert ids.dtype == torch.long and ids.tolist() == [tok("the red circle")["input_ids"]]
    assert tok(["star", "star"], return_tensors="pt")["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match="one length"):
        tok(["star", "the red circle"], return_tensors="pt")

"""The XLM-R sentencepiece tokenizer of BEiT-3 / EVF-SAM: loading and batch tokenisation.

    tok = load_tokenizer("evf-sam")                         # dir with sentencepiece.bpe.model
    ids, pad = tokenize(tok, ["the man on the left"], max_length=model.max_text_len)

Ids are XLM-R's (fairseq) ids: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, and the
sentencepiece piece ``k`` (k >= 3) is id ``k + 1``; ``<mask>`` is the last id. With transformers 5,
``XLMRobertaTokenizer`` is the `tokenizers`-backed (Unigram) tokenizer and loads such a directory
with ``from_pretrained(dir)``, converting ``sentencepiece.bpe.model`` on the fly.

The BEiT-3 text embedding needs at least ``len(tokenizer)`` rows: the official model has 64010 for
XLM-R's 64000 pieces (+ ``<mask>`` and the multitask release's ``[semantic]``). A tiny model built
for a tiny tokenizer (`train_sentencepiece`) sets ``encoder_overrides={"vocab_size": len(tokenizer)}``.

Added tokens: the multitask EVF-SAM release ships ``added_tokens.json`` = ``{"[semantic]": 64002}``
and prepends ``"[semantic] "`` to the expression of a semantic-level mask (paper Tab. 6 data).
`load_tokenizer` reads that file (transformers does) and checks every id; ``tokenize(tok,
["[semantic] wall"])`` then gives ``<s> 64002 ▁wall </s>``, the prefix as ONE token. A tokenizer
without it (the plain EVF-SAM release, tiny test tokenizers) gets it with `add_tokens` (next free
id, written into ``added_tokens.json``); `require_semantic_token` is the check a semantic data
source runs (tokenizer has it, and the BEiT-3 text embedding has a row for it).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["ADDED_TOKENS_FILE", "SEMANTIC_PREFIX", "SEMANTIC_TOKEN", "SPECIAL_IDS", "SPM_FILE", "add_tokens",
           "load_tokenizer", "require_semantic_token", "semantic_token_id", "tokenize", "train_sentencepiece"]

SPM_FILE = "sentencepiece.bpe.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # XLM-R / fairseq
SEMANTIC_TOKEN = "[semantic]"  # multitask EVF-SAM release: id 64002 in added_tokens.json
SEMANTIC_PREFIX = SEMANTIC_TOKEN + " "  # prepended to the expression of a semantic-level mask


def load_tokenizer(path: str | Path):
    """XLM-R tokenizer from a directory with ``sentencepiece.bpe.model`` (+ tokenizer_config.json).

    Raises FileNotFoundError naming the path when the directory or the model file is missing, and
    ValueError when the special-token ids are not XLM-R's.
    """
    from transformers import XLMRobertaTokenizer

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {str(path)!r} (expected a directory with {SPM_FILE})")
    if not (path / SPM_FILE).is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{str(path / SPM_FILE)!r} not found: the tokenizer directory needs BEiT-3's "
                                f"sentencepiece model ({SPM_FILE}) or a tokenizer.json")
    tok = XLMRobertaTokenizer.from_pretrained(str(path))
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS}
    if got != SPECIAL_IDS:
        raise ValueError(f"tokenizer in {str(path)!r} has special ids {got}; expected XLM-R's {SPECIAL_IDS}")
    added = _read_added_tokens(path)
    wrong = {t: (i, tok.convert_tokens_to_ids(t)) for t, i in added.items() if tok.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"{str(path / ADDED_TOKENS_FILE)!r}: " + "; ".join(
            f"{t!r} should be id {i} but loads as {j}" for t, (i, j) in wrong.items())
            + " (added ids must continue the vocabulary without gaps)")
    return tok


def _read_added_tokens(path: Path) -> dict[str, int]:
    f = Path(path) / ADDED_TOKENS_FILE
    if not f.is_file():
        return {}
    data = json.loads(f.read_text())
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in data.items()):
        raise ValueError(f"{str(f)!r} must be a JSON object {{token: id}}, got {data!r}")
    return data


def add_tokens(path: str | Path, tokens: Sequence[str]) -> dict[str, int]:
    """Adds ``tokens`` (e.g. ``["[semantic]"]``) to the tokenizer directory ``path`` the way the
    multitask EVF-SAM release does: ``added_tokens.json`` maps each to the next free id
    (``len(tokenizer)``, then +1, ...). Tokens already there keep their id. Returns the whole map.

    For tiny / test tokenizers and for fine-tuning a plain EVF-SAM tokenizer on semantic data; the
    model's text embedding must then have ``len(tokenizer)`` rows (`require_semantic_token` checks).
    """
    path = Path(path)
    tok = load_tokenizer(path)
    added = _read_added_tokens(path)
    n = len(tok)
    for t in tokens:
        if t in added:
            continue
        if t in tok.get_vocab():
            raise ValueError(f"{t!r} is already in the vocabulary of {str(path)!r} (id {tok.convert_tokens_to_ids(t)})")
        added[t] = n
        n += 1
    (path / ADDED_TOKENS_FILE).write_text(json.dumps(added, indent=2) + "\n")
    return added


def semantic_token_id(tokenizer) -> int | None:
    """The id of ``[semantic]`` when the tokenizer has it as one added token, else None."""
    vocab = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    i = vocab.get(SEMANTIC_TOKEN)
    return None if i is None else int(i)


def require_semantic_token(tokenizer, text_embedding_rows: int | None = None) -> int:
    """Checks that ``"[semantic] ..."`` prompts can be used; returns the ``[semantic]`` id.

    Raises ValueError when the tokenizer lacks the token (it would be split into ``[``, ``semantic``,
    ``]`` pieces) or when the model's text embedding (``text_embedding_rows``, BEiT-3's
    ``vocab_size``) has no row for it.
    """
    i = semantic_token_id(tokenizer)
    if i is None:
        raise ValueError(
            f"the tokenizer has no {SEMANTIC_TOKEN!r} token, which semantic-segmentation data (the "
            f"{SEMANTIC_PREFIX!r} prefix, paper Tab. 6) needs: use the multitask EVF-SAM tokenizer (its "
            f"{ADDED_TOKENS_FILE} has {{\"{SEMANTIC_TOKEN}\": 64002}}; model.tokenizer=<that dir>), or add it to a "
            f"tokenizer directory with evf_sam.tokenizer.add_tokens(dir, [{SEMANTIC_TOKEN!r}]) "
            f"(tiny tokenizers made by model=tiny get it automatically)")
    if text_embedding_rows is not None and i >= int(text_embedding_rows):
        raise ValueError(
            f"{SEMANTIC_TOKEN!r} is token id {i} (len(tokenizer) = {len(tokenizer)}) but the BEiT-3 text embedding "
            f"has only {text_embedding_rows} rows (vocab_size): use a model whose vocab_size > {i} (the official "
            f"BEiT-3 has 64010) or set model.encoder_overrides.vocab_size={len(tokenizer)}")
    return i


def tokenize(tokenizer, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """``<s> prompt </s>`` per prompt, right-padded with ``<pad>`` to the longest.

    Returns ids (N, T) long and padding_mask (N, T) bool (True = pad). A prompt longer than
    ``max_length`` tokens is truncated to ``max_length`` (keeping the final ``</s>``) with a
    warning naming it. An empty or whitespace-only prompt raises ValueError naming its index.
    Prompts are used as given (evaluation lower-cases and strips them before calling this).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to tokenize")
    if max_length < 3:
        raise ValueError(f"max_length={max_length}: needs room for <s>, one token and </s>")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty ({p!r}); every prompt needs text")
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for i, p in enumerate(prompts):
        ids = list(tokenizer(p, add_special_tokens=False)["input_ids"])
        seq = [bos, *ids, eos]
        if len(seq) > max_length:
            warnings.warn(f"prompt {i} has {len(seq)} tokens (with <s> and </s>); truncated to max_length="
                          f"{max_length}: {p[:60]!r}", stacklevel=2)
            seq = seq[:max_length - 1] + [eos]
        rows.append(seq)
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    padding_mask = torch.ones((len(rows), t), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        padding_mask[i, :len(r)] = False
    return ids, padding_mask


# tokenizer_config.json / special_tokens_map.json as in the official EVF-SAM release (transformers 4.x schema)
_MASK = {"content": "<mask>", "lstrip": True, "normalized": False, "rstrip": False, "single_word": False}
_TOKENIZER_CONFIG = {
    "bos_token": "<s>", "clean_up_tokenization_spaces": True, "cls_token": "<s>", "eos_token": "</s>",
    "mask_token": {"__type": "AddedToken", **_MASK}, "model_max_length": 1000000000000000019884624838656,
    "pad_token": "<pad>", "sep_token": "</s>", "sp_model_kwargs": {}, "tokenizer_class": "XLMRobertaTokenizer",
    "unk_token": "<unk>",
}
_SPECIAL_TOKENS_MAP = {
    "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": _MASK, "pad_token": "<pad>",
    "sep_token": "</s>", "unk_token": "<unk>",
}


def train_sentencepiece(sentences: Iterable[str], out_dir: str | Path, vocab_size: int, *,
                        model_type: str = "unigram", seed: int = 0) -> Path:
    """Trains a small sentencepiece model and writes the official tokenizer layout into ``out_dir``:
    ``sentencepiece.bpe.model``, ``tokenizer_config.json``, ``special_tokens_map.json``.

    The pieces are laid out like XLM-R's (``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, then pieces), so
    `load_tokenizer` maps them exactly as it maps BEiT-3's model. ``model_type`` defaults to
    "unigram" because transformers 5 loads every XLM-R sentencepiece model as a Unigram tokenizer:
    a unigram model tokenises identically under sentencepiece and transformers. ``vocab_size`` is
    the sentencepiece vocabulary (an upper bound for small corpora); ``len(tokenizer)`` is
    ``vocab_size + 2`` (fairseq offset and ``<mask>``). Deterministic for a given corpus and seed.
    """
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = [s.strip() for s in sentences if s and s.strip()]
    if not sentences:
        raise ValueError("train_sentencepiece needs at least one non-empty sentence")
    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    with open(_devnull(), "w") as log:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=buf, vocab_size=int(vocab_size), model_type=model_type,
            character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
            num_threads=1, shuffle_input_sentence=False, logstream=log,
        )
    (out_dir / SPM_FILE).write_bytes(buf.getvalue())
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(_SPECIAL_TOKENS_MAP, indent=2) + "\n")
    return out_dir


def _devnull() -> str:
    import os

    return os.devnull

"""The XLM-R sentencepiece tokenizer of BEiT-3 / EVF-SAM: loading and batch tokenisation.

    tok = load_tokenizer("evf-sam")                         # dir with sentencepiece.bpe.model
    ids, pad = tokenize(tok, ["the man on the left"], max_length=model.max_text_len)

The official code tokenises with transformers 4's slow ``XLMRobertaTokenizer``
(``AutoTokenizer.from_pretrained(dir, use_fast=False)``): the ``sentencepiece`` library itself plus
fairseq's id mapping. `XlmrTokenizer` reproduces it exactly, for unigram and BPE sentencepiece
models alike (tests/test_tokenizer_parity.py checks ids produced by the slow tokenizer): the text is
split around special and added tokens (``<s>``, ``<pad>``, ``</s>``, ``<unk>``, ``<mask>``, which
also eats the whitespace to its left, and the tokens of ``added_tokens.json``), every other piece of
text goes through ``SentencePieceProcessor.encode(text, out_type=str)``, and the pieces map to ids
as fairseq does: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3 (also for any piece
sentencepiece does not know), the sentencepiece piece ``k`` (k >= 3) is id ``k + 1``, ``<mask>`` is
``len(sentencepiece) + 1``. transformers 5's ``XLMRobertaTokenizer`` is not used: it converts every
sentencepiece model into a Unigram ``tokenizers`` model, which changes the ids of BPE models
(e.g. "the thing" -> ``[0, 5, 15, 70, 38, 2]`` instead of ``[0, 33, 70, 38, 2]``).

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
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["ADDED_TOKENS_FILE", "SEMANTIC_PREFIX", "SEMANTIC_TOKEN", "SPECIAL_IDS", "SPM_FILE", "XlmrTokenizer",
           "add_tokens", "load_tokenizer", "require_semantic_token", "semantic_token_id", "tokenize",
           "train_sentencepiece", "write_tokenizer_dir"]

SPM_FILE = "sentencepiece.bpe.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # XLM-R / fairseq
SEMANTIC_TOKEN = "[semantic]"  # multitask EVF-SAM release: id 64002 in added_tokens.json
SEMANTIC_PREFIX = SEMANTIC_TOKEN + " "  # prepended to the expression of a semantic-level mask
_SPM_LAYOUT = ("<unk>", "<s>", "</s>")  # sentencepiece ids 0, 1, 2 of XLM-R's (and BEiT-3's) model
_FAIRSEQ_OFFSET = 1


class XlmrTokenizer:
    """transformers 4's slow ``XLMRobertaTokenizer``, id for id, on the ``sentencepiece`` library.

    The parts of the transformers interface this codebase uses: ``tok(text, add_special_tokens=True)
    ["input_ids"]`` (a string or a list of strings), `tokenize`, `convert_tokens_to_ids`,
    `convert_ids_to_tokens`, `get_vocab`, `get_added_vocab`, ``len(tok)`` and the special tokens and
    their ids (``bos_token_id`` = ``cls_token_id`` = 0, ``pad_token_id`` = 1, ``eos_token_id`` =
    ``sep_token_id`` = 2, ``unk_token_id`` = 3, ``mask_token_id`` = ``len(sentencepiece) + 1``).

    Args:
        model_file: the sentencepiece model (``sentencepiece.bpe.model``; unigram or BPE). Its first
            three pieces must be ``<unk>``, ``<s>``, ``</s>`` (XLM-R's layout), else ValueError.
        added_tokens: ``{token: id}`` of ``added_tokens.json`` (e.g. ``{"[semantic]": 64002}``); each id
            must continue the vocabulary (ValueError otherwise).
    """

    bos_token = cls_token = "<s>"
    pad_token = "<pad>"
    eos_token = sep_token = "</s>"
    unk_token = "<unk>"
    mask_token = "<mask>"
    padding_side = "right"

    def __init__(self, model_file: str | Path, added_tokens: Mapping[str, int] | None = None, *,
                 name_or_path: str | Path | None = None) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.name_or_path = str(name_or_path if name_or_path is not None else self.model_file.parent)
        self.sp_model = spm.SentencePieceProcessor(model_file=str(self.model_file))
        n = self.sp_model.get_piece_size()
        layout = tuple(self.sp_model.id_to_piece(i) for i in range(min(3, n)))
        if layout != _SPM_LAYOUT:
            raise ValueError(f"{str(self.model_file)!r}: sentencepiece pieces 0-2 are {list(layout)}; an XLM-R "
                             f"tokenizer needs {list(_SPM_LAYOUT)} (train with unk_id=0, bos_id=1, eos_id=2, "
                             f"e.g. evf_sam.tokenizer.train_sentencepiece)")
        self._special = {**SPECIAL_IDS, self.mask_token: n + _FAIRSEQ_OFFSET}
        self.vocab_size = n + _FAIRSEQ_OFFSET + 1  # transformers' vocab_size: pieces, offset, <mask>
        self._added: dict[str, int] = {}
        for t, i in (added_tokens or {}).items():
            want = self._special.get(t, self.vocab_size + len(self._added))
            if t in self._special and int(i) == want:  # e.g. "<mask>" written by a save_pretrained
                continue
            if t in self._added or int(i) != want:
                raise ValueError(f"{t!r} should be id {int(i)} but loads as {want} (added ids must continue the "
                                 f"vocabulary without gaps: the next free id is {self.vocab_size + len(self._added)})")
            self._added[t] = int(i)
        self._id_to_token = {i: t for t, i in {**self._special, **self._added}.items()}
        # transformers' Trie.split: the leftmost match, the longest one there
        words = sorted({*self._special, *self._added}, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(w) for w in words) + ")")

    # -- ids of the special tokens -------------------------------------------------------------

    bos_token_id = cls_token_id = SPECIAL_IDS["<s>"]
    pad_token_id = SPECIAL_IDS["<pad>"]
    eos_token_id = sep_token_id = SPECIAL_IDS["</s>"]
    unk_token_id = SPECIAL_IDS["<unk>"]

    @property
    def mask_token_id(self) -> int:
        return self._special[self.mask_token]

    # -- vocabulary ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Pieces + the fairseq specials + ``<mask>`` + added tokens (``len()`` of the slow tokenizer)."""
        return self.vocab_size + len(self._added)

    def get_added_vocab(self) -> dict[str, int]:
        """The tokens of ``added_tokens.json`` (special tokens excluded), as transformers'."""
        return dict(self._added)

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.convert_ids_to_tokens(i): i for i in range(self.vocab_size)}
        vocab.update(self._added)
        return vocab

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._id_to_token_str(ids)
        return [self._id_to_token_str(int(i)) for i in ids]

    def _token_to_id(self, token: str) -> int:
        if token in self._added:
            return self._added[token]
        if token in self._special:
            return self._special[token]
        i = self.sp_model.piece_to_id(token)
        return i + _FAIRSEQ_OFFSET if i else self.unk_token_id  # sentencepiece id 0 = unknown piece

    def _id_to_token_str(self, i: int) -> str:
        if i in self._id_to_token:
            return self._id_to_token[i]
        if not 0 <= i - _FAIRSEQ_OFFSET < self.sp_model.get_piece_size():
            raise IndexError(f"token id {i} is out of range for a vocabulary of {len(self)}")
        return self.sp_model.id_to_piece(i - _FAIRSEQ_OFFSET)

    # -- tokenising ----------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[str]:
        """Text -> tokens (pieces), as the slow tokenizer's ``tokenize``: special / added tokens are
        kept whole (``<mask>`` strips the whitespace on its left), the rest goes through sentencepiece."""
        parts = self._split_re.split(text)  # [text, token, text, token, ..., text]
        for k in range(1, len(parts), 2):
            if parts[k] == self.mask_token and parts[k - 1]:  # AddedToken("<mask>", lstrip=True)
                parts[k - 1] = parts[k - 1].rstrip()
        out: list[str] = []
        for k, part in enumerate(parts):
            if not part:
                continue
            out.extend([part] if k % 2 else self.sp_model.encode(part, out_type=str))
        return out

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``<s> ids </s>`` (without the two with ``add_special_tokens=False``)."""
        ids = [self._token_to_id(t) for t in self.tokenize(text)]
        return [self.cls_token_id, *ids, self.sep_token_id] if add_special_tokens else ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True,
                 return_tensors: str | None = None) -> dict[str, list | Tensor]:
        """``{"input_ids": ids}`` for a string, ``{"input_ids": [ids, ...]}`` for a list of strings;
        ``return_tensors="pt"``: a (1, T) / (N, T) long tensor (as the official ``tokenizer(prompt,
        return_tensors="pt")``; no padding, so a list needs equal lengths: use `tokenize` to pad)."""
        ids = self.encode(text, add_special_tokens) if isinstance(text, str) else \
            [self.encode(t, add_special_tokens) for t in text]
        if return_tensors is None:
            return {"input_ids": ids}
        if return_tensors != "pt":
            raise ValueError(f"return_tensors={return_tensors!r}; only 'pt' (torch) is supported")
        rows = [ids] if isinstance(text, str) else ids
        if len({len(r) for r in rows}) > 1:
            raise ValueError("return_tensors='pt' needs sequences of one length (no padding here); use "
                             "evf_sam.tokenizer.tokenize(tokenizer, prompts, max_length) for a padded batch")
        return {"input_ids": torch.tensor(rows, dtype=torch.long)}

    def __repr__(self) -> str:
        return (f"XlmrTokenizer({self.name_or_path!r}, pieces={self.sp_model.get_piece_size()}, "
                f"added={self._added})")


def load_tokenizer(path: str | Path):
    """XLM-R tokenizer from a directory with ``sentencepiece.bpe.model`` (+ ``added_tokens.json``).

    Returns an `XlmrTokenizer` (the official slow tokenizer, id for id). A directory with only a
    ``tokenizer.json`` (no sentencepiece model) is loaded with transformers' ``XLMRobertaTokenizer``.
    Raises FileNotFoundError naming the path when the directory or the model file is missing, and
    ValueError when the special-token or added-token ids are not XLM-R's.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory not found: {str(path)!r} (expected a directory with {SPM_FILE})")
    if not (path / SPM_FILE).is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{str(path / SPM_FILE)!r} not found: the tokenizer directory needs BEiT-3's "
                                f"sentencepiece model ({SPM_FILE}) or a tokenizer.json")
    added = _read_added_tokens(path)
    if (path / SPM_FILE).is_file():
        try:
            return XlmrTokenizer(path / SPM_FILE, added, name_or_path=path)
        except ValueError as e:
            raise ValueError(f"{str(path / ADDED_TOKENS_FILE)!r}: {e}" if "added ids" in str(e) else str(e)) from None
    from transformers import XLMRobertaTokenizer

    tok = XLMRobertaTokenizer.from_pretrained(str(path))
    got = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS}
    if got != SPECIAL_IDS:
        raise ValueError(f"tokenizer in {str(path)!r} has special ids {got}; expected XLM-R's {SPECIAL_IDS}")
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
    warning naming it. A prompt with no visible character (empty, whitespace, zero-width characters;
    `evf_sam.prompts.is_blank`) raises ValueError naming its index.
    Prompts are used as given (evaluation lower-cases and strips them before calling this).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to tokenize")
    if max_length < 3:
        raise ValueError(f"max_length={max_length}: needs room for <s>, one token and </s>")
    from evf_sam.prompts import check_prompt

    for i, p in enumerate(prompts):
        check_prompt(p, f"prompt {i}")
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
    `load_tokenizer` maps them exactly as it maps BEiT-3's model. ``model_type``: "unigram" (default)
    or "bpe" (`XlmrTokenizer` reproduces the official ids for both). ``vocab_size`` is
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
    return write_tokenizer_dir(out_dir, buf.getvalue())


def write_tokenizer_dir(out_dir: str | Path, spm_model: bytes, added_tokens: Mapping[str, int] | None = None) -> Path:
    """The official tokenizer layout in ``out_dir``: ``sentencepiece.bpe.model`` (the bytes of a
    sentencepiece model), ``tokenizer_config.json``, ``special_tokens_map.json`` (transformers 4.x
    schema, as the official release) and, if ``added_tokens`` is given, ``added_tokens.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPM_FILE).write_bytes(spm_model)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(_TOKENIZER_CONFIG, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(_SPECIAL_TOKENS_MAP, indent=2) + "\n")
    if added_tokens:
        (out_dir / ADDED_TOKENS_FILE).write_text(json.dumps(dict(added_tokens), indent=2) + "\n")
    return out_dir


def _devnull() -> str:
    import os

    return os.devnull

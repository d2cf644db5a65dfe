"""Tiny tokenizers for tiny encoders trained from scratch (tests, the CPU pilots), in each encoder's own
release format, so that `models.encoders.load_encoder_tokenizer` reads them like the real ones.

    tok_dir = make_tiny_tokenizer("clip_tiny", sentences, run_dir / "tokenizer")   # vocab.json + merges.txt
    tok_dir = make_tiny_tokenizer("vilt_tiny", sentences, run_dir / "tokenizer")   # vocab.txt
    tok_dir = make_tiny_tokenizer("beit3_tiny", sentences, out, vocab_size=128, semantic_token=True)

- BEiT-3: an XLM-R-layout sentencepiece model (`tokenizer.train_sentencepiece`), optionally with the
  multitask release's ``[semantic]`` added token.
- CLIP: byte-level BPE as openai/clip-vit-large-patch14 ships it (``vocab.json`` + ``merges.txt``,
  word-final symbols end in ``</w>``, the GPT-2 byte-to-unicode table), read by transformers'
  ``CLIPTokenizer``. ``<|startoftext|>`` = 0 and ``<|endoftext|>`` = 1 (also padding), the ids the
  ``clip_tiny`` preset's text config uses; then the 512 byte symbols (any text stays encodable), then
  one merge per step of a plain BPE learnt on the sentences' words until each word is one symbol.
- ViLT: BERT WordPiece, uncased, as dandelin/vilt-b32-mlm ships it (``vocab.txt``), read by
  ``BertTokenizer``: [PAD] [UNK] [CLS] [SEP] [MASK] (ids 0..4, BERT's order), every word of the
  sentences, then single characters with and without ``##`` (so unseen words split into characters).

The files are written atomically (`atomic.atomic_write_text`); ``tokenizer_files_present`` tells whether
a directory already holds an encoder's tokenizer (a resumed run reuses it).
"""

from __future__ import annotations

import collections
import json
import re
import string
from pathlib import Path
from typing import Iterable, Sequence

from evf_sam.atomic import atomic_write_text

__all__ = ["CLIP_SPECIALS", "VILT_SPECIALS", "make_tiny_tokenizer", "tokenizer_files", "tokenizer_files_present",
           "write_tiny_clip_bpe", "write_tiny_wordpiece"]

CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
VILT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# CLIP's pre-tokenisation of lowercased text (letters runs, single digits, other non-space runs); the
# ``'s|'t|...`` contractions of the release's pattern never occur in the synthetic sentences.
_CLIP_WORDS = re.compile(r"[^\W\d_]+|\d|[^\s\w]+")
_BERT_WORDS = re.compile(r"\w+|[^\w\s]")


def _family(encoder: str) -> str:
    from evf_sam.models.encoders import encoder_kind

    return encoder_kind(encoder)


def tokenizer_files(encoder: str) -> tuple[str, ...]:
    """The files of ``encoder``'s tokenizer directory (sentencepiece.bpe.model | vocab.json + merges.txt | vocab.txt)."""
    from evf_sam.models.checkpoint import TOKENIZER_KIND_FILES

    return TOKENIZER_KIND_FILES[_family(encoder)]


def tokenizer_files_present(encoder: str, path: str | Path) -> bool:
    return all((Path(path) / f).is_file() for f in tokenizer_files(encoder))


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable unicode character table (256 entries)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def write_tiny_clip_bpe(sentences: Iterable[str], out_dir: str | Path) -> Path:
    """``vocab.json`` + ``merges.txt`` of a byte-level BPE learnt on ``sentences`` (module docstring)."""
    out_dir = Path(out_dir)
    words = collections.Counter(w for s in sentences for w in _CLIP_WORDS.findall(" ".join(s.lower().split())))
    if not words:
        raise ValueError("no words to learn a CLIP BPE from: pass some sentences")
    b2u = _bytes_to_unicode()
    vocab = [*CLIP_SPECIALS, *b2u.values(), *(c + "</w>" for c in b2u.values())]
    seqs = {}
    for w in sorted(words):
        symbols = [b2u[b] for b in w.encode("utf-8")]
        symbols[-1] += "</w>"
        seqs[w] = symbols
    merges = []
    while True:
        pairs: collections.Counter = collections.Counter()
        for w, s in seqs.items():
            for pair in zip(s, s[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))  # most frequent, ties by symbol: deterministic
        merges.append(f"{a} {b}")
        vocab.append(a + b)
        for w, s in seqs.items():
            merged, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(s[i])
                    i += 1
            seqs[w] = merged
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "merges.txt", "#version: 0.2\n" + "".join(m + "\n" for m in merges))
    atomic_write_text(out_dir / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    return out_dir


def write_tiny_wordpiece(sentences: Iterable[str], out_dir: str | Path) -> Path:
    """``vocab.txt`` of an uncased BERT WordPiece vocabulary for ``sentences`` (module docstring)."""
    out_dir = Path(out_dir)
    words = sorted({w for s in sentences for w in _BERT_WORDS.findall(s.lower())})
    if not words:
        raise ValueError("no words to make a WordPiece vocabulary from: pass some sentences")
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | {c for w in words for c in w})
    vocab = list(VILT_SPECIALS)
    for t in [*words, *chars, *("##" + c for c in chars)]:
        if t not in vocab:
            vocab.append(t)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "vocab.txt", "".join(t + "\n" for t in vocab))
    return out_dir


def make_tiny_tokenizer(encoder: str, sentences: Sequence[str], out_dir: str | Path, *, vocab_size: int = 128,
                        semantic_token: bool = False) -> Path:
    """``encoder``'s tiny tokenizer trained / built on ``sentences`` into ``out_dir``; returns it.

    vocab_size: the sentencepiece vocabulary (BEiT-3 only; the CLIP / ViLT vocabularies cover the
    sentences' words). semantic_token: add ``[semantic]`` (BEiT-3 only, the multitask release's token).
    """
    family = _family(encoder)
    if family == "beit3":
        from evf_sam.tokenizer import SEMANTIC_TOKEN, add_tokens, train_sentencepiece

        train_sentencepiece(list(sentences), out_dir, vocab_size)
        if semantic_token:  # the multitask release's added token, next free id
            add_tokens(out_dir, [SEMANTIC_TOKEN])
        return Path(out_dir)
    if semantic_token:
        raise ValueError(f"the [semantic] token (semantic-segmentation data, paper Tab. 6) is a BEiT-3 tokenizer "
                         f"token; encoder={encoder!r} has none: train Tab. 6 rows with a BEiT-3 encoder")
    if family == "clip":
        return write_tiny_clip_bpe(sentences, out_dir)
    return write_tiny_wordpiece(sentences, out_dir)

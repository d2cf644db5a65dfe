"""Small, stable helpers for tests (ours and other modules'): a tiny EVF-SAM, a tiny tokenizer, and
official-format checkpoint directories written from a model.

    tok_dir = make_tokenizer(tmp_path / "tok")
    model = build_tiny_model(seed=0)                        # tiny SAM (256 px) + beit3_tiny (32 px)
    ckpt = write_official_checkpoint(tmp_path / "ckpt", model, tok_dir)   # fp16 pytorch_model.bin
    EvfSam.from_pretrained(ckpt)

Tiny sizes: SAM input 256 -> 16x16 image embedding, prompt dim 32, low-res masks 64x64; BEiT-3 at
32 px, width 64, 2 layers, text up to 64 tokens, text embedding 1000 rows (enough for
`make_tokenizer`'s vocabulary).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from evf_sam.models.checkpoint import official_config, official_state_dict, write_checkpoint_dir
from evf_sam.models.evf_sam import EvfSam, EvfSamConfig, build_evf_sam

__all__ = ["TINY_SENTENCES", "build_tiny_model", "make_tokenizer", "tiny_config", "tiny_inputs",
           "write_official_checkpoint"]

_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_SHAPES = ("circle", "square", "triangle", "star", "ellipse", "rectangle")
_WHERE = ("on the left", "on the right", "at the top", "at the bottom", "in the middle",
          "next to the big one", "below the small one", "above everything")
_SIZES = ("big", "small", "large", "tiny")
TINY_SENTENCES: tuple[str, ...] = tuple(
    f"the {z} {c} {s} {w}" for z in _SIZES for c in _COLOURS for s in _SHAPES for w in _WHERE
)


def tiny_config(vocab_size: int | None = None, **overrides) -> EvfSamConfig:
    """tiny SAM + beit3_tiny; ``vocab_size`` sets the BEiT-3 text embedding rows (>= len(tokenizer)).
    ``sam_variant="efficient_sam_tiny"`` / ``"sam2_tiny"`` swap in the other SAM families at toy size."""
    enc = {} if vocab_size is None else {"vocab_size": int(vocab_size)}
    overrides.setdefault("sam_variant", "tiny")
    return EvfSamConfig(encoder="beit3_tiny", encoder_overrides=enc, **overrides)


def build_tiny_model(seed: int = 0, vocab_size: int | None = None, **overrides) -> EvfSam:
    """A randomly initialised tiny EvfSam (eval mode, float32), deterministic in ``seed``.

    SAM initialises ``no_mask_embed`` / tokens with N(0, 1) but leaves the rest to PyTorch defaults,
    so outputs are small but not degenerate.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_evf_sam(tiny_config(vocab_size, **overrides)).eval()


def make_tokenizer(out_dir: str | Path, vocab_size: int = 128) -> Path:
    """Trains a tiny XLM-R-layout sentencepiece tokenizer on `TINY_SENTENCES`; returns the dir."""
    from evf_sam.tokenizer import train_sentencepiece

    return train_sentencepiece(TINY_SENTENCES, out_dir, vocab_size)


def tiny_inputs(model: EvfSam, n_images: int = 2, n_prompts: int = 3, text_len: int = 6,
                seed: int = 0) -> dict[str, Tensor]:
    """Random inputs for ``model.forward`` / the three stages (keys = forward's argument names).

    sam_images (B, 3, S, S), beit_images (B, 3, 32, 32), text_ids (N, T) starting with <s>,
    ending in </s> then <pad> (prompt i has T - i real tokens), text_padding_mask (N, T),
    image_index (N,) = [0, 1, ..., 0, 1, ...] modulo B.
    """
    g = torch.Generator().manual_seed(seed)
    s, b = model.sam_image_size, model.beit_image_size
    vocab = model.encoder.config.vocab_size if hasattr(model.encoder, "config") else 100
    ids = torch.randint(4, min(vocab, 60), (n_prompts, text_len), generator=g)
    pad = torch.zeros(n_prompts, text_len, dtype=torch.bool)
    ids[:, 0] = 0
    for i in range(n_prompts):
        n = max(3, text_len - i)
        ids[i, n - 1] = 2
        ids[i, n:] = 1
        pad[i, n:] = True
    return {
        "sam_images": torch.randn(n_images, 3, s, s, generator=g),
        "beit_images": torch.randn(n_images, 3, b, b, generator=g).clamp(-1, 1),
        "text_ids": ids,
        "text_padding_mask": pad,
        "image_index": torch.arange(n_prompts) % n_images,
    }


def write_official_checkpoint(out_dir: str | Path, model: EvfSam, tokenizer_dir: str | Path | None = None,
                              dtype: torch.dtype = torch.float16, fmt: str = "bin") -> Path:
    """Writes ``model`` as the official release does: official tensor names, weights cast to
    ``dtype``, official config.json (plus our tiny-model fields), tokenizer files.

    fmt: "bin" (pytorch_model.bin, like the official release), "safetensors" (model.safetensors),
    "sharded" (pytorch_model-0000i-of-0000n.bin + pytorch_model.bin.index.json),
    "sharded_safetensors" (model-0000i-of-0000n.safetensors + model.safetensors.index.json).
    """
    return write_checkpoint_dir(out_dir, config=official_config(model, dtype),
                                state=official_state_dict(model, dtype), tokenizer_dir=tokenizer_dir, fmt=fmt)

"""Cache of the frozen SAM image encoder's output per training image.

The SAM image encoder is frozen and training applies no augmentation to the SAM branch, so its
output for an image never changes during a run: compute it once, store it, reuse it.

    cache = EmbeddingCache.open_or_build(root, model, dataset.image_keys(), dataset.sam_image, device=dev)
    emb = cache.get(batch.image_keys)           # (B, C, h, w) float32, replaces model.encode_image

Images are named by any hashable, sortable, JSON-able id: the training data's `data.batch.ImageKey`
``(source, image id)`` pairs (stored as ``[source, id]``, read back as tuples, which equal them), or
plain ints.

How it is computed (``encoder`` / ``precision``, data.embedding_cache_encoder / _precision):
"fast" + "bf16" (default) runs `FastImageEncoderViT` (models/sam_encoder.py) sharing the SAM-1
encoder's weights, its linear layers and attention in bfloat16 with fp32 residual / norms / position
terms (3.3x faster than fp32 on a CPU with native bf16; EfficientSAM's encoder, already SDPA, runs
under bf16 autocast instead). "model" runs ``model.encode_image`` as configured (autocast for bf16);
"fp32" computes in float32. Stored as ``dtype``: float16 (default), bfloat16 or float32.
Measured on the tiny test model against the fp32 reference encoder: fast-bf16 + float16 storage
moves the embedding by <= 0.011 (max |emb| 3.8) and the decoded low-res logits by <= 6.3e-4 (max
0.12), mask IoU 0.9993 (plain bf16 autocast: 0.033, 2.1e-3, 0.9965); tests/test_embedding_cache.py
asserts 0.02, 2e-3 and IoU >= 0.99.

Layout (one directory per key under ``root``)::

    root/<key>/embeddings.npy   np.memmap (.npy header), (num_images, C, h, w), float16 by default
                                (bfloat16: stored as its uint16 bit pattern, numpy has no bfloat16)
    root/<key>/index.json       {"key", "image_ids" (row order), "shape", "dtype", "meta", "complete": true}

The key is a hash of the SAM image-encoder weights (names, shapes, dtypes, bytes), the preprocessing
parameters (input size, pixel mean / std, resize rule) and how the rows were computed and stored
(encoder, precision, storage dtype): any change gives a new key, so a stale cache is never read; it
is rebuilt beside.

Building is shared by the ranks: rank 0 creates ``root/<key>.tmp-<nonce>/embeddings.npy`` at full
size, every rank fills the rows ``i % world == rank``, then rank 0 writes index.json and renames the
directory to ``root/<key>`` (atomic on one file system). A crash mid-build leaves only a ``.tmp-``
directory, which is never read. Multi-node runs need ``root`` on a shared file system.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from evf_sam.engine import distributed as D
from evf_sam.precision import dtype_of

__all__ = ["EmbeddingCache", "cache_key", "weights_hash"]

logger = logging.getLogger(__name__)

# 2: image ids are (source, id) pairs; format-1 caches (integer ids with offset ranges per source) get
# another key, so they are rebuilt beside, never read
FORMAT_VERSION = 2
_DTYPES = {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}  # bfloat16: its bit pattern
ENCODERS = ("fast", "model")
CACHE_PRECISIONS = ("bf16", "fp32")  # names of evf_sam.precision


def weights_hash(module: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in ``module.state_dict()``, sorted by name."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(model: nn.Module, *, dtype: str = "float16", preprocess: dict | None = None, encoder: str = "fast",
              precision: str = "bf16") -> tuple[str, dict]:
    """(key, meta) for ``model`` (an EvfSam): SAM image-encoder weights + preprocessing parameters + how
    the rows are computed (``encoder`` / ``precision``, see `EmbeddingCache.open_or_build`) and stored."""
    from evf_sam.preprocess import PIXEL_MEAN, PIXEL_STD

    sam = model.sam
    mean = sam.pixel_mean.flatten().tolist() if hasattr(sam, "pixel_mean") else PIXEL_MEAN  # backends: SAM's
    std = sam.pixel_std.flatten().tolist() if hasattr(sam, "pixel_std") else PIXEL_STD
    default = {"resize": "longest_side", "pad": "bottom_right_zero"} if model.resize_mode == "pad" \
        else {"resize": "pil_bilinear_to_square"}  # = official eval.py (preprocess.py, pipeline="eval")
    meta = {
        "format": FORMAT_VERSION,
        "image_size": int(model.sam_image_size),
        "pixel_mean": [round(float(x), 6) for x in mean],
        "pixel_std": [round(float(x), 6) for x in std],
        "preprocess": dict(preprocess or default),
        "dtype": dtype,
        "encoder": _effective_encoder(model, encoder),
        "precision": precision,
        "weights_sha256": weights_hash(sam.image_encoder),
    }
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20]
    return key, meta


class EmbeddingCache:
    """A finished cache directory, memory-mapped read-only."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index = json.loads((self.path / "index.json").read_text())
        if not index.get("complete"):
            raise RuntimeError(f"embedding cache {self.path} is not complete")
        self.key: str = index["key"]
        self.meta: dict = index["meta"]
        self.image_ids: list[Hashable] = [_from_json(i) for i in index["image_ids"]]
        self.row = {iid: r for r, iid in enumerate(self.image_ids)}
        self.array = np.load(self.path / "embeddings.npy", mmap_mode="r")  # (M, C, h, w)
        if list(self.array.shape) != [len(self.image_ids), *index["shape"]]:
            raise RuntimeError(f"embedding cache {self.path}: array shape {self.array.shape} does not match "
                               f"index.json ({len(self.image_ids)} images x {index['shape']})")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __contains__(self, image_id: Hashable) -> bool:
        return image_id in self.row

    def get(self, image_ids: Sequence[Hashable], device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32) -> Tensor:
        """(B,) image ids (e.g. `Batch.image_keys`) -> (B, C, h, w) embeddings on ``device`` in ``dtype``."""
        try:
            rows = [self.row[i] for i in image_ids]
        except KeyError as e:
            raise KeyError(f"image id {e.args[0]} is not in the embedding cache {self.path}") from None
        x = torch.from_numpy(np.stack([self.array[r] for r in rows]))
        if self.array.dtype == np.uint16:  # bfloat16 rows (their bit pattern)
            x = x.view(torch.bfloat16)
        return x.to(device=device, dtype=dtype, non_blocking=True)

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def open_or_build(cls, root: str | Path, model: nn.Module, image_ids: Sequence[Hashable],
                      load_sam_image: Callable[[Any], Tensor], *, device: torch.device | str = "cpu",
                      batch_size: int = 8, dtype: str = "float16", encoder: str = "fast", precision: str = "bf16",
                      preprocess: dict | None = None) -> "EmbeddingCache":
        """Opens ``root/<key>`` if complete and covering ``image_ids``; else builds it (all ranks call this).

        load_sam_image: image id -> (3, S, S) float32 SAM-preprocessed image (e.g. ``dataset.sam_image``).
        dtype: storage, "float16" | "bfloat16" | "float32".
        encoder: "fast" (a `FastImageEncoderViT` sharing the SAM-1 encoder's weights; other SAMs: their
            own encoder) | "model" (``model.encode_image`` as it is).
        precision: "bf16" (fast: bf16 linear layers + attention, fp32 residual / norms; otherwise bf16
            autocast) | "fp32".
        """
        if dtype not in _DTYPES:
            raise ValueError(f"embedding cache dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"embedding cache encoder must be one of {list(ENCODERS)}, got {encoder!r}")
        if precision not in CACHE_PRECISIONS:
            raise ValueError(f"embedding cache precision must be one of {list(CACHE_PRECISIONS)}, got {precision!r}")
        root = Path(root)
        key, meta = cache_key(model, dtype=dtype, preprocess=preprocess, encoder=encoder,
                              precision=precision) if D.is_main() else (None, None)
        key, meta = D.broadcast_object((key, meta))
        final = root / key
        wanted = sorted(set(image_ids))
        reuse = False
        if D.is_main() and (final / "index.json").is_file():
            try:
                have = cls(final)
                reuse = have.meta == meta and set(wanted) <= set(have.image_ids)
                if not reuse:
                    logger.info("embedding cache %s does not cover this run's images; rebuilding", final)
            except Exception as e:  # unreadable: rebuild
                logger.warning("embedding cache %s unreadable (%s); rebuilding", final, e)
        if D.broadcast_object(reuse):
            logger.info("embedding cache: reusing %s (%d images)", final, len(wanted))
            return cls(final)

        # Build: rank 0 allocates, every rank fills its rows, rank 0 finalises.
        enc = model.sam.image_encoder
        s = int(model.sam_image_size)
        tmp = None
        if D.is_main():
            with torch.no_grad():
                probe = model.encode_image(torch.zeros(1, 3, s, s, device=device, dtype=next(enc.parameters()).dtype))
            if not isinstance(probe, torch.Tensor):
                raise ValueError(f"data.embedding_cache: SAM {model.config.sam_variant!r} gives multi-scale image "
                                 f"features ({len(probe)} tensors), which the cache does not store; set "
                                 f"data.embedding_cache=null for SAM-2 runs")
            root.mkdir(parents=True, exist_ok=True)
            shape = list(probe.shape[1:])
            tmp = root / f"{key}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            np.lib.format.open_memmap(tmp / "embeddings.npy", mode="w+", dtype=_DTYPES[dtype],
                                      shape=(len(wanted), *shape)).flush()
            logger.info("embedding cache: building %s for %d images (%s, %s)", final, len(wanted), shape, dtype)
        tmp = Path(D.broadcast_object(str(tmp) if tmp else None))
        D.barrier()
        arr = np.load(tmp / "embeddings.npy", mmap_mode="r+")
        mine = list(range(D.rank(), len(wanted), D.world_size()))
        was_training = enc.training
        enc.eval()
        encode = _row_encoder(model, meta["encoder"], dtype_of(precision), torch.device(device))
        with torch.no_grad():
            for start in range(0, len(mine), batch_size):
                rows = mine[start:start + batch_size]
                x = torch.stack([load_sam_image(wanted[r]) for r in rows]).to(device)
                arr[rows] = _to_storage(encode(x.to(next(enc.parameters()).dtype)), dtype)
        enc.train(was_training)
        arr.flush()
        del arr
        D.barrier()
        if D.is_main():
            index = {"key": key, "image_ids": [_to_json(i) for i in wanted], "shape": shape, "dtype": dtype,
                     "meta": meta, "complete": True}
            with open(tmp / "index.json", "w") as f:
                json.dump(index, f)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():  # an older (e.g. smaller) cache under the same key: replace it
                old = root / f"{key}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            logger.info("embedding cache: wrote %s", final)
        D.barrier()
        return cls(final)


def _effective_encoder(model: nn.Module, encoder: str) -> str:
    """"fast" only where there is a segment-anything encoder to replace; "model" otherwise."""
    if encoder == "fast":
        from segment_anything.modeling.image_encoder import ImageEncoderViT

        from evf_sam.models.sam_encoder import FastImageEncoderViT

        if isinstance(getattr(model.sam, "image_encoder", None), (ImageEncoderViT, FastImageEncoderViT)):
            return "fast"
    return "model"


def _row_encoder(model: nn.Module, encoder: str, compute: torch.dtype,
                 device: torch.device) -> Callable[[Tensor], Tensor]:
    """(B, 3, S, S) -> (B, C, h, w): the SAM image encoder as the cache computes it (see `open_or_build`)."""
    if encoder == "fast":
        from evf_sam.models.sam_encoder import FastImageEncoderViT

        # shares the parameters (no copy, weights stay in their dtype; bf16 casts happen per layer)
        fast = FastImageEncoderViT.from_reference(model.sam.image_encoder, share=True,
                                                  compute_dtype=None if compute == torch.float32 else compute)
        return fast.eval()
    if compute == torch.float32:
        return model.encode_image

    def autocast_encode(x: Tensor) -> Tensor:
        with torch.autocast(device.type, dtype=compute):
            return model.encode_image(x)

    return autocast_encode


def _to_storage(emb: Tensor, dtype: str) -> np.ndarray:
    """(B, C, h, w) -> numpy rows in the storage ``dtype`` (bfloat16 as uint16 bits; rounded to nearest)."""
    if dtype == "bfloat16":
        return emb.detach().to("cpu", torch.bfloat16).view(torch.uint16).numpy()
    return emb.detach().float().cpu().numpy().astype(_DTYPES[dtype])


def _to_json(image_id: Hashable) -> Any:
    """An image id as JSON: tuples (ImageKey) as lists, ints / strings as they are."""
    return list(image_id) if isinstance(image_id, tuple) else image_id


def _from_json(value: Any) -> Hashable:
    """Inverse of `_to_json`: lists back to tuples (equal to the ImageKey they were)."""
    return tuple(value) if isinstance(value, list) else value

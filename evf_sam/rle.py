"""COCO run-length encoding of binary masks, in pycocotools' exact format (no pycocotools needed).

    rle = encode_rle(mask)            # {"size": [H, W], "counts": "ab3c0..."} (compressed string)
    mask = decode_rle(rle)            # (H, W) bool; also reads uncompressed {"counts": [int, ...]}

Counts run over the mask in column-major (Fortran) order, alternating background / foreground
runs, starting with background (so a mask whose first pixel is set begins with a 0 run). The
compressed string is pycocotools' ``rleToString`` (maskApi.c): each count, minus the count two
places before it from the third on, as 5-bit groups, least significant first, with a continuation
bit (0x20) and a sign bit (0x10) on the last group, each plus 48 as an ASCII character.
``encode_rle(m)["counts"] == pycocotools.mask.encode(np.asfortranarray(m))["counts"].decode()``
(tests/test_batch_predict.py checks it against pycocotools).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

__all__ = ["decode_rle", "encode_rle", "rle_counts", "rle_from_counts_string", "rle_to_counts_string"]


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of an (H, W) mask (nonzero = foreground)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {m.shape}")
    flat = (m != 0).ravel(order="F").astype(np.int8)
    if flat.size == 0:
        return []
    change = np.flatnonzero(np.diff(flat)) + 1  # indices where a new run starts
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:  # counts start with a background run
        runs = [0] + runs
    return [int(r) for r in runs]


def rle_to_counts_string(counts: list[int]) -> str:
    """pycocotools' compressed counts string (``rleToString``)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            b = x & 0x1F
            x >>= 5  # arithmetic shift, as C's on a signed long
            more = (x != -1) if (b & 0x10) else (x != 0)
            if more:
                b |= 0x20
            out.append(chr(b + 48))
    return "".join(out)


def rle_from_counts_string(s: str | bytes) -> list[int]:
    """Inverse of `rle_to_counts_string` (``rleFrString``)."""
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE counts string")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [H, W], "counts": str}``: the JSON form of ``pycocotools.mask.encode`` (whose counts
    are bytes)."""
    m = np.asarray(mask)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle_to_counts_string(rle_counts(m))}


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """(H, W) bool mask of a COCO RLE, compressed (str / bytes counts) or uncompressed (list)."""
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = list(map(int, counts)) if isinstance(counts, (list, tuple)) else rle_from_counts_string(counts)
    if sum(counts) != h * w or any(c < 0 for c in counts):
        raise ValueError(f"RLE counts cover {sum(counts)} pixels (or are negative); size {h}x{w} needs {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()

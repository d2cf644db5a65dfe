"""Tiny ADE20K / Mapillary Vistas trees in the release layouts (tests, smoke runs), and the writers.

    make_tiny_semantic(root, num_train=6, num_val=3, size=48)     # coloured rectangles of a few classes
    write_ade20k(root, "training", [("ADE_train_00000001", image, raw_label)])     # 0 = other, 1..150
    write_mapillary(root, "training", [("img1", image, label_ids)], labels=[("nature--sky", "Sky"), ...])

The layouts are the ones `evf_sam.data.semantic` reads (see its docstring and data/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["TINY_MAPILLARY_LABELS", "make_tiny_semantic", "write_ade20k", "write_mapillary"]


def _save_jpg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, quality=95)


def write_ade20k(root: str | Path, split: str, samples: Sequence[tuple[str, np.ndarray, np.ndarray]], *,
                 dirname: str = "ADEChallengeData2016") -> Path:
    """Writes ``(stem, image (H, W, 3) uint8, raw label (H, W) in 0..150)`` samples into the ADE20K
    layout under ``root/dirname``; returns that directory."""
    from PIL import Image

    base = Path(root) / dirname
    for stem, image, label in samples:
        label = np.asarray(label)
        if label.min() < 0 or label.max() > 150:
            raise ValueError(f"ADE20K raw labels are 0..150, got {label.min()}..{label.max()}")
        _save_jpg(base / "images" / split / f"{stem}.jpg", image)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(label.astype(np.uint8)).save(base / "annotations" / split / f"{stem}.png")
    return base


TINY_MAPILLARY_LABELS: tuple[tuple[str, str], ...] = (  # (name, readable): a few real v2.0 labels
    ("animal--bird", "Bird"), ("construction--barrier--curb", "Curb"), ("construction--flat--road", "Road"),
    ("human--person--individual", "Person"), ("nature--sky", "Sky"), ("object--vehicle--car", "Car"),
    ("void--unlabeled", "Unlabeled"),
)


def write_mapillary(root: str | Path, split: str, samples: Sequence[tuple[str, np.ndarray, np.ndarray]], *,
                    labels: Sequence[tuple[str, str]] = TINY_MAPILLARY_LABELS, version: str = "v2.0") -> Path:
    """Writes ``(stem, image, label ids)`` samples into the Mapillary Vistas layout under
    ``root/mapillary`` (``config_<version>.json`` from ``labels`` = [(name, readable)], palette
    PNG labels as released); returns that directory."""
    from PIL import Image

    base = Path(root) / "mapillary"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(labels))
    colors = [[int(x) for x in rng.integers(0, 256, 3)] for _ in labels]
    cfg = {"labels": [{"name": n, "readable": r, "color": c, "instances": False,
                       "evaluate": not n.endswith("unlabeled")} for (n, r), c in zip(labels, colors)],
           "version": version, "mapping": "public"}
    (base / f"config_{version}.json").write_text(json.dumps(cfg, indent=1))
    palette = [v for c in colors for v in c] + [0] * (768 - 3 * len(colors))
    for stem, image, label in samples:
        label = np.asarray(label)
        if label.min() < 0 or label.max() >= len(labels):
            raise ValueError(f"label ids must be in [0, {len(labels)}), got {label.min()}..{label.max()}")
        _save_jpg(base / split / "images" / f"{stem}.jpg", image)
        (base / split / version / "labels").mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(label.astype(np.uint8)).convert("P")
        im.putpalette(palette)
        im.save(base / split / version / "labels" / f"{stem}.png")
    return base


def _tiny_samples(rng: np.random.Generator, n: int, size: int, class_values: Sequence[int], background: int,
                  prefix: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    colours = {v: rng.integers(0, 256, 3) for v in class_values}
    for k in range(n):
        h, w = size, size + 8 * (k % 3)  # a few aspect ratios
        label = np.full((h, w), background, dtype=np.int64)
        image = np.full((h, w, 3), 110, dtype=np.uint8)
        for v in rng.choice(class_values, size=min(3, len(class_values)), replace=False):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            y1, x1 = y0 + rng.integers(h // 4, h // 2), x0 + rng.integers(w // 4, w // 2)
            label[y0:y1, x0:x1] = v
            image[y0:y1, x0:x1] = colours[int(v)]
        out.append((f"{prefix}{k + 1:08d}", image, label))
    return out


def make_tiny_semantic(root: str | Path, *, num_train: int = 6, num_val: int = 3, size: int = 48,
                       seed: int = 0) -> dict[str, Path]:
    """Tiny ADE20K + Mapillary Vistas trees (coloured rectangles of a few classes) under ``root``."""
    rng = np.random.default_rng(seed)
    ade_vals = [1, 3, 5, 13, 21]  # wall, sky, tree, person, car
    ade = None
    for split, n, pre in (("training", num_train, "ADE_train_"), ("validation", num_val, "ADE_val_")):
        ade = write_ade20k(root, split, _tiny_samples(rng, n, size, ade_vals, 0, pre))
    mp = None
    for split, n in (("training", num_train), ("validation", num_val)):
        mp = write_mapillary(root, split, _tiny_samples(rng, n, size, list(range(6)), 6, f"{split[:2]}_"))
    return {"ade20k": ade, "mapillary": mp}

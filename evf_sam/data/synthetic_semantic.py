"""Tiny ADE20K / Mapillary Vistas trees in the release layouts (tests, smoke runs, the Tab. 6 CPU pilot),
and the writers.

    make_tiny_semantic(root, num_train=6, num_val=3, size=48)     # coloured rectangles of a few classes
    make_synthetic_semantic(root, num_train=300, num_val=50)       # shape scenes, idempotent (Tab. 6 pilot)
    write_ade20k(root, "training", [("ADE_train_00000001", image, raw_label)])     # 0 = other, 1..150
    write_mapillary(root, "training", [("img1", image, label_ids)], labels=[("nature--sky", "Sky"), ...])

The layouts are the ones `evf_sam.data.semantic` reads (see its docstring and data/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["SEMANTIC_MANIFEST", "SYNTHETIC_ADE20K_CLASSES", "SYNTHETIC_MAPILLARY_LABELS", "TINY_MAPILLARY_LABELS",
           "make_synthetic_semantic", "make_tiny_semantic", "synthetic_semantic_class_names", "write_ade20k",
           "write_mapillary"]


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


# -- shape scenes for the Tab. 6 pilot ------------------------------------------------------------------
# The scenes of the synthetic REFER data (evf_sam.data.synthetic: 2-4 coloured circles / squares /
# triangles) over two "stuff" regions, upper (light grey) and lower (dark grey), split at a random
# horizon. Every pixel has a class: each shape kind and each stuff region is one class, whatever the
# shape's colour. ADE20K classes must be ADE20K's own (label value v is ADE20K_CLASSES[v - 1]); the
# Mapillary tree names its own, and shares two of them with the ADE20K one ("sky", "ball"), as the real
# datasets share some classes: training on it can transfer to ADE20K val for those classes only.
SYNTHETIC_ADE20K_CLASSES: dict[str, str] = {"upper": "sky", "lower": "floor", "circle": "ball", "square": "box",
                                            "triangle": "tent"}
SYNTHETIC_MAPILLARY_LABELS: tuple[tuple[str, str, str], ...] = (  # (scene part, Mapillary name, readable)
    ("upper", "nature--sky", "Sky"), ("lower", "construction--flat--road", "Road"),
    ("circle", "object--ball", "Ball"), ("square", "object--billboard", "Billboard"),
    ("triangle", "object--traffic-sign--front", "Traffic Sign"), ("", "void--unlabeled", "Unlabeled"),
)
SEMANTIC_MANIFEST = "_SYNTHETIC_SEMANTIC_DONE.json"
_SEMANTIC_STARTED = "_SYNTHETIC_SEMANTIC_STARTED.json"  # trees being replaced: ours, incomplete
_SEMANTIC_VERSION = 1
_STUFF_GREYS = {"upper": (175, 175, 175), "lower": (85, 85, 85)}


def synthetic_semantic_class_names() -> list[str]:
    """Every class name of the synthetic ADE20K / Mapillary trees (tokenizer training text)."""
    names = [*SYNTHETIC_ADE20K_CLASSES.values(), *(r.lower() for part, _, r in SYNTHETIC_MAPILLARY_LABELS if part)]
    return sorted(set(names))


def _shape_scene(rng: np.random.Generator, image_size: int, class_value: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, label (H, W) int64): the stuff split at a random horizon, then the shapes."""
    from PIL import Image, ImageDraw

    from evf_sam.data.synthetic import COLOURS, _polygon, _scene

    h, w, objs = _scene(rng, image_size, 2, 4, tuple(COLOURS), repeat_colours=True)
    horizon = int(rng.integers(int(0.3 * h), int(0.7 * h) + 1))
    image = np.empty((h, w, 3), dtype=np.uint8)
    label = np.empty((h, w), dtype=np.int64)
    image[:horizon], label[:horizon] = _STUFF_GREYS["upper"], class_value["upper"]
    image[horizon:], label[horizon:] = _STUFF_GREYS["lower"], class_value["lower"]
    for colour, shape, cx, cy, r in objs:
        canvas = Image.new("L", (w, h), 0)
        ImageDraw.Draw(canvas).polygon(_polygon(shape, cx, cy, r), fill=1)
        mask = np.asarray(canvas, dtype=bool)  # painted pixels are exactly the label's
        image[mask], label[mask] = COLOURS[colour], class_value[shape]
    return image, label


def _semantic_done(root: Path, params: dict) -> bool:
    try:
        manifest = json.loads((root / SEMANTIC_MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("params") != params:
        return False
    counts = {"ADEChallengeData2016/images/training": params["num_train"],
              "ADEChallengeData2016/images/validation": params["num_val"],
              "mapillary/training/images": params["num_train"], "mapillary/validation/images": params["num_val"]}
    return all(sum(1 for _ in (root / d).glob("*.jpg")) == n for d, n in counts.items())


def make_synthetic_semantic(root: str | Path, *, seed: int = 0, num_train: int = 300, num_val: int = 50,
                            image_size: int = 64, force: bool = False) -> dict:
    """Writes (or reuses) synthetic ADE20K and Mapillary Vistas trees of shape scenes under ``root``
    (``root/ADEChallengeData2016``, ``root/mapillary``, v2.0 layout), for the CPU pilot of paper Tab. 6.

    Each tree has ``num_train`` training and ``num_val`` validation images (their own scenes: seeds
    differ per tree and split). Idempotent and atomic: both trees are written into a temporary
    directory under ``root`` and moved into place (``root/_SYNTHETIC_SEMANTIC_STARTED.json`` marks the
    move), then ``root/_SYNTHETIC_SEMANTIC_DONE.json`` (parameters) is written last; a complete tree set
    with the same parameters is reused, anything else that we wrote (an interrupted write included) is
    rebuilt, and trees we did not write (real data) are never touched: FileExistsError.
    Returns {"root", "reused", "classes": {"ade20k": [...], "mapillary": [...]}}.
    """
    import shutil
    import tempfile

    from evf_sam.atomic import atomic_write_text

    if num_train < 1 or num_val < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    from evf_sam.data.semantic import ADE20K_CLASSES

    root = Path(root)
    params = {"version": _SEMANTIC_VERSION, "seed": int(seed), "num_train": int(num_train), "num_val": int(num_val),
              "image_size": int(image_size)}
    classes = {"ade20k": sorted(SYNTHETIC_ADE20K_CLASSES.values()),
               "mapillary": sorted(r.lower() for part, _, r in SYNTHETIC_MAPILLARY_LABELS if part)}
    if not force and _semantic_done(root, params):
        return {"root": str(root), "reused": True, "classes": classes}
    trees = ("ADEChallengeData2016", "mapillary")
    ours = (root / SEMANTIC_MANIFEST).is_file() or (root / _SEMANTIC_STARTED).is_file()
    if not ours and any((root / t).exists() for t in (*trees, "ade20k")):
        raise FileExistsError(f"{root} holds ADE20K / Mapillary data that was not written by the synthetic generator; "
                              f"use another data root (or data.semantic_root)")
    root.mkdir(parents=True, exist_ok=True)
    ade_value = {part: ADE20K_CLASSES.index(name) + 1 for part, name in SYNTHETIC_ADE20K_CLASSES.items()}
    mp_value = {part: i for i, (part, _, _) in enumerate(SYNTHETIC_MAPILLARY_LABELS) if part}
    mp_labels = [(name, readable) for _, name, readable in SYNTHETIC_MAPILLARY_LABELS]
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic_semantic.tmp-", dir=root))
    try:
        for t, (tree, values) in enumerate((("ade20k", ade_value), ("mapillary", mp_value))):
            for s, (split, n, prefix) in enumerate((("training", num_train, "train_"), ("validation", num_val, "val_"))):
                samples = []
                for k in range(n):
                    rng = np.random.default_rng([int(seed), t, s, k])
                    image, label = _shape_scene(rng, image_size, values)
                    stem = f"ADE_{prefix}{k + 1:08d}" if tree == "ade20k" else f"{prefix}{k + 1:06d}"
                    samples.append((stem, image, label))
                if tree == "ade20k":
                    write_ade20k(tmp, split, samples)
                else:
                    write_mapillary(tmp, split, samples, labels=mp_labels)
        atomic_write_text(root / _SEMANTIC_STARTED, json.dumps({"params": params}) + "\n")
        (root / SEMANTIC_MANIFEST).unlink(missing_ok=True)  # from here on the trees are incomplete
        for tree in trees:
            shutil.rmtree(root / tree, ignore_errors=True)
            (tmp / tree).rename(root / tree)
        atomic_write_text(root / SEMANTIC_MANIFEST, json.dumps({"params": params, "classes": classes}, indent=1) + "\n")
        (root / _SEMANTIC_STARTED).unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"root": str(root), "reused": False, "classes": classes}

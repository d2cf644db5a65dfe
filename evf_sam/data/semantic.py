"""Semantic-segmentation data (paper Tab. 6): ADE20K and Mapillary Vistas as text-prompted masks.

    ade = ADE20KReader(root, "training")            # root holds ADEChallengeData2016/ (or ade20k/)
    vistas = MapillaryReader(root, "training")      # root holds mapillary/
    src = SemanticTrainSource(ade, name="ade20k", rate=1.0)          # data.train_dataset: mixed into ReferTrainDataset
    val = SemanticEvalDataset(ADE20KReader(root, "validation"), sam_size=1024, beit_size=224)
    evaluate(model, tok, val)        # cIoU / gIoU / Pr@K as REFER + "miou" over the classes

Layouts (as released; the class ids are the label PNG values):

    <root>/ADEChallengeData2016/          # MIT Scene Parsing (ADEChallengeData2016.zip); "ade20k/" also read
      images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg
      annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png   # L: 0 = other (ignored), 1..150
    <root>/mapillary/                     # Mapillary Vistas v1.2 / v2.0
      config_v2.0.json (config_v1.2.json) # {"labels": [{"name", "readable", "color", ...}, ...]}
      {training,validation}/images/XXXX.jpg
      {training,validation}/v2.0/labels/XXXX.png                       # P: index into "labels"

Facts taken from the public code (no code copied): LISA (dvlab-research/LISA, utils/sem_seg_dataset.py,
utils/ade20k_classes.json) and EVF-SAM (hustvl/EVF-SAM, utils/sem_seg_dataset.py,
utils/ade20k_dataset.py, utils/dataset.py):

- ADE20K: label 0 ("other") becomes the ignore label 255, label v in 1..150 is class v - 1; class names
  are LISA's ``ade20k_classes.json`` (the first name of each of the 150 SceneParsing classes), embedded
  here as `ADE20K_CLASSES`.
- Mapillary: class names are ``config_v2.0.json`` ``labels[i]["readable"].lower()``; labels are read
  from ``training/v2.0/labels/*.png`` and images from ``training/images/*.jpg``. LISA keeps every
  label value except 255 (so it can ask for "unlabeled"); we also map Mapillary's "Unlabeled" class to
  the ignore label (our choice: it is not a thing one can refer to).
- Per sampled image: up to ``num_classes_per_sample`` = 3 classes present in the label map, drawn
  without replacement; the expression is the class name, and EVF-SAM's multitask data prepends
  ``"[semantic] "`` (ade20k_dataset.py; its tokenizer's added_tokens.json has ``[semantic]`` = 64002).
  The mask of a class is ``label == class``. Images with no class present are skipped (re-drawn).
- Validation (EVF-SAM utils/dataset.py ``ValDataset`` "ade"): one item per image, one expression per
  class present, its ``label == class`` mask. That code has no prefix and counts predictions on the
  ignored pixels as false positives; we prepend the prefix the model was trained with and, by default
  (``ignore_unlabeled=True``), leave ignored pixels out of I and U, as semantic-segmentation mIoU does.

mIoU (`ClassIoU`): per class c, IoU_c = ΣI / ΣU over the expressions of class c in the split; mIoU is
the mean over the classes that occur. Only classes present in an image are queried (a text-prompted
model is not asked for absent classes), so false positives of absent classes do not count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from evf_sam.data.eval_dataset import EvalItem, ImageEntriesDataset
from evf_sam.tokenizer import SEMANTIC_PREFIX

__all__ = ["ADE20KReader", "ADE20K_CLASSES", "ClassIoU", "IGNORE_INDEX", "MapillaryReader", "SEMANTIC_PREFIX",
           "SemanticEvalDataset", "SemanticEvalItem", "SemanticReader", "build_semantic_reader", "make_tiny_semantic",
           "write_ade20k", "write_mapillary"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # label value that is no class (LISA / EVF-SAM's ignore_label)
DATA_README = "data/README.md"

# The 150 ADE20K SceneParsing classes (label value v is ADE20K_CLASSES[v - 1]); the names LISA uses
# (utils/ade20k_classes.json): the first synonym of each class in ADE20K's objectInfo150.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150

_ADE_DIRS = ("ADEChallengeData2016", "ade20k")  # the release zip's name, LISA / EVF-SAM's name
_SPLIT_SHORT = {"training": "train", "validation": "val", "testing": "test"}
_INVALID = -1


# ---------------------------------------------------------------------------------------------
# Readers


class SemanticReader:
    """Pairs of (image .jpg, label .png) of one split, and the label -> class decoding.

    ``classes``: class names (unique); ``read_label(i)`` -> (H, W) int64 map of class indices into
    ``classes`` with `IGNORE_INDEX` for unlabeled pixels. Subclasses set ``_lut`` (raw value -> class
    index, IGNORE_INDEX, or invalid) and the file lists.
    """

    name: str  # "ade20k" | "mapillary"
    split: str  # "training" | "validation"
    classes: tuple[str, ...]
    images: list[Path]
    labels: list[Path]
    _lut: np.ndarray  # (256,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name} {self.split}: {len(self)} images, {len(self.classes)} classes)"

    def read_label(self, i: int) -> np.ndarray:
        """(H, W) int64: class index in ``[0, len(classes))`` or `IGNORE_INDEX`."""
        from PIL import Image

        path = self.labels[i]
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"{path}: label image mode {im.mode!r}; expected a single-channel (L / P) map of "
                                 f"class ids (colour-coded label images are not supported)")
            raw = np.asarray(im).astype(np.int64)
        if raw.min() < 0 or raw.max() >= len(self._lut):
            raise ValueError(f"{path}: label values {int(raw.min())}..{int(raw.max())} outside 0..{len(self._lut) - 1}")
        out = self._lut[raw]
        if (out == _INVALID).any():
            bad = sorted(set(np.unique(raw[out == _INVALID]).tolist()))
            raise ValueError(f"{path}: label values {bad[:10]} are no {self.name} class (it has {len(self.classes)})")
        return out

    def read_image(self, i: int) -> np.ndarray:
        from evf_sam.preprocess import load_image

        return load_image(self.images[i])

    @staticmethod
    def present_classes(label: np.ndarray) -> list[int]:
        """Sorted class indices present in a decoded label map (ignore excluded)."""
        u = np.unique(label)
        return [int(c) for c in u if c != IGNORE_INDEX]


def _pair_files(image_dir: Path, label_dir: Path, what: str, layout: str) -> tuple[list[Path], list[Path]]:
    labels = sorted(p for p in label_dir.iterdir() if p.suffix == ".png")
    if not labels:
        raise FileNotFoundError(f"{what}: no .png label maps in {label_dir}/\n{layout}")
    images = [image_dir / (p.stem + ".jpg") for p in labels]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(labels)} label maps have no image, e.g. "
                                f"{missing[0]} (for {label_dir / (missing[0].stem + '.png')})\n{layout}")
    return images, labels


def _missing(paths: Sequence[Path]) -> list[str]:
    return [str(p) + ("/" if not p.suffix else "") for p in paths if not p.exists()]


class ADE20KReader(SemanticReader):
    """ADE20K SceneParsing (150 classes) in the release layout under ``root``."""

    name = "ade20k"

    def __init__(self, root: str | Path, split: str = "training"):
        root = Path(root)
        base = next((root / d for d in _ADE_DIRS if (root / d).is_dir()), None)
        if base is None and (root / "annotations").is_dir():
            base = root  # pointed straight at the ADEChallengeData2016 directory
        layout = (f"Expected layout (see {DATA_README}):\n  {root}/ADEChallengeData2016/images/{split}/*.jpg\n"
                  f"  {root}/ADEChallengeData2016/annotations/{split}/*.png   (ADEChallengeData2016.zip of the MIT "
                  f"Scene Parsing benchmark, unzipped; a directory named ade20k/ is read as well)")
        if base is None:
            raise FileNotFoundError(f"ADE20K not found: {root / _ADE_DIRS[0]}/ does not exist.\n{layout}")
        image_dir, label_dir = base / "images" / split, base / "annotations" / split
        missing = _missing([image_dir, label_dir])
        if missing:
            raise FileNotFoundError(f"ADE20K {split}: missing {', '.join(missing)}\n{layout}")
        self.root, self.base, self.split = root, base, split
        self.classes = ADE20K_CLASSES
        self.images, self.labels = _pair_files(image_dir, label_dir, f"ADE20K {split}", layout)
        lut = np.full(256, _INVALID, dtype=np.int64)
        lut[0] = IGNORE_INDEX  # "other"
        lut[1:151] = np.arange(150)
        lut[255] = IGNORE_INDEX
        self._lut = lut


class MapillaryReader(SemanticReader):
    """Mapillary Vistas (v1.2: 66 labels, v2.0: 124 labels) in the release layout under ``root``.

    ``version``: "v2.0", "v1.2" or "auto" (v2.0 when its config and labels exist, else v1.2).
    Classes are the ``readable`` names, lower-cased; labels sharing a name are one class; the
    "unlabeled" label is ignored.
    """

    name = "mapillary"

    def __init__(self, root: str | Path, split: str = "training", version: str = "auto"):
        root = Path(root)
        base = root / "mapillary" if (root / "mapillary").is_dir() else root
        if version == "auto":
            version = next((v for v in ("v2.0", "v1.2")
                            if (base / f"config_{v}.json").is_file() and (base / split / v / "labels").is_dir()),
                           "v2.0")
        if version not in ("v2.0", "v1.2"):
            raise ValueError(f"Mapillary version {version!r}: choose v2.0, v1.2 or auto")
        config = base / f"config_{version}.json"
        image_dir, label_dir = base / split / "images", base / split / version / "labels"
        layout = (f"Expected layout (see {DATA_README}):\n  {root}/mapillary/config_{version}.json\n"
                  f"  {root}/mapillary/{split}/images/*.jpg\n  {root}/mapillary/{split}/{version}/labels/*.png"
                  f"   (the Mapillary Vistas {version} release, unzipped into mapillary/)")
        missing = _missing([config, image_dir, label_dir])
        if missing:
            raise FileNotFoundError(f"Mapillary Vistas {split}: missing {', '.join(missing)}\n{layout}")
        labels = json.loads(config.read_text()).get("labels")
        if not (isinstance(labels, list) and labels and all(isinstance(x, dict) and "readable" in x for x in labels)):
            raise ValueError(f"{config}: expected {{\"labels\": [{{\"readable\": ..., ...}}, ...]}}")
        self.root, self.base, self.split, self.version = root, base, split, version
        names: list[str] = []
        lut = np.full(256, _INVALID, dtype=np.int64)
        for i, lab in enumerate(labels):
            n = str(lab["readable"]).strip().lower()
            if n == "unlabeled" or str(lab.get("name", "")).endswith("unlabeled"):
                lut[i] = IGNORE_INDEX
                continue
            if n not in names:
                names.append(n)
            lut[i] = names.index(n)
        lut[255] = IGNORE_INDEX
        self.classes = tuple(names)
        self.raw_names = tuple(str(x["readable"]) for x in labels)
        self._lut = lut
        self.images, self.labels = _pair_files(image_dir, label_dir, f"Mapillary Vistas {split}", layout)


def build_semantic_reader(dataset: str, root: str | Path, split: str = "training", **kwargs) -> SemanticReader:
    """``dataset``: "ade20k" | "mapillary" (kwargs: ``version`` for Mapillary)."""
    if dataset == "ade20k":
        return ADE20KReader(root, split)
    if dataset == "mapillary":
        return MapillaryReader(root, split, **kwargs)
    raise ValueError(f"semantic dataset {dataset!r}: choose ade20k or mapillary")


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class SemanticEvalItem(EvalItem):
    class_ids: list[int] = field(default_factory=list)  # (N,) class index of each expression
    ignore_mask: Tensor | None = None  # (H, W) bool: unlabeled pixels, left out of I and U (None: none)


class SemanticEvalDataset(ImageEntriesDataset):
    """One item per image, one expression per class present (``prefix + name``), gt = ``label == class``.

    The `ReferEvalDataset` interface `evaluate` uses (``name``, ``subset``, ``shard``, items), plus
    ``num_classes`` / ``class_names``: `evaluate` then also reports ``miou`` (`ClassIoU`). Images with
    no labelled class are skipped; the label maps are scanned once here (the first ``max_images``
    images that have a class).
    """

    def __init__(self, reader: SemanticReader, *, sam_size: int = 1024, beit_size: int = 224,
                 max_images: int | None = None, prefix: str = SEMANTIC_PREFIX, ignore_unlabeled: bool = True,
                 resize_mode: str = "pad"):
        self.reader = reader
        self.sam_size, self.beit_size, self.prefix = int(sam_size), int(beit_size), prefix
        self.ignore_unlabeled, self.resize_mode = bool(ignore_unlabeled), resize_mode
        self.entries: list[tuple[int, list[int]]] = []  # (image index, present class ids)
        for i in range(len(reader)):
            if max_images is not None and len(self.entries) >= int(max_images):
                break
            present = reader.present_classes(reader.read_label(i))
            if present:
                self.entries.append((i, present))

    @property
    def name(self) -> str:
        return f"{self.reader.name}|semantic|{_SPLIT_SHORT.get(self.reader.split, self.reader.split)}"

    @property
    def num_classes(self) -> int:
        return len(self.reader.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.reader.classes

    def __repr__(self) -> str:
        return f"SemanticEvalDataset({self.name}: {len(self)} images, {self.num_expressions} expressions)"

    def __getitem__(self, index: int) -> SemanticEvalItem:
        from evf_sam.preprocess import beit3_preprocess, sam_preprocess

        i, class_ids = self.entries[index]
        image = self.reader.read_image(i)
        label = self.reader.read_label(i)
        h, w = image.shape[:2]
        if label.shape != (h, w):
            raise ValueError(f"{self.reader.labels[i]}: label map is {label.shape[0]}x{label.shape[1]} but its image "
                             f"{self.reader.images[i]} is {h}x{w}")
        sam, input_size = sam_preprocess(image, self.sam_size, self.resize_mode)
        lab = torch.from_numpy(label)
        gt = torch.stack([lab == c for c in class_ids])  # (N, H, W) bool
        return SemanticEvalItem(
            image_id=int(i), image_path=str(self.reader.images[i]), sam_image=sam,
            beit_image=beit3_preprocess(image, self.beit_size),
            input_size=(int(input_size[0]), int(input_size[1])), original_size=(h, w),
            sentences=[self.prefix + self.reader.classes[c] for c in class_ids], gt_masks=gt,
            ref_ids=list(class_ids), sent_ids=list(class_ids), class_ids=list(class_ids),
            ignore_mask=(lab == IGNORE_INDEX) if self.ignore_unlabeled else None)


class ClassIoU:
    """Per-class ΣI / ΣU over a split (int64 sums: exact, any rank count / order); mIoU over the
    classes with ΣU > 0 (every queried class has a non-empty ground truth, so: the classes that occur)."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.sums = torch.zeros(2, self.num_classes, dtype=torch.int64)  # [I; U] per class

    def update(self, class_ids: Sequence[int], inter: Tensor, union: Tensor) -> None:
        """One expression per entry: its class, I and U (pixel counts)."""
        c = torch.as_tensor(list(class_ids), dtype=torch.long)
        i = torch.as_tensor(inter).flatten().cpu().to(torch.int64)
        u = torch.as_tensor(union).flatten().cpu().to(torch.int64)
        if not (c.numel() == i.numel() == u.numel()):
            raise ValueError(f"{c.numel()} class ids for {i.numel()} I and {u.numel()} U values")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise ValueError(f"class ids must be in [0, {self.num_classes}), got {c.tolist()}")
        self.sums[0].index_add_(0, c, i)
        self.sums[1].index_add_(0, c, u)

    def all_reduce(self, device: torch.device | str | None = None) -> "ClassIoU":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        s = self.sums.to(device)
        dist.all_reduce(s)
        self.sums = s.cpu()
        return self

    def per_class(self) -> dict[int, float]:
        """{class index: IoU} for the classes that occur."""
        inter, union = self.sums
        return {int(c): int(inter[c]) / int(union[c]) for c in torch.nonzero(union > 0).flatten().tolist()}

    def compute(self) -> dict[str, Any]:
        ious = self.per_class()
        return {"miou": sum(ious.values()) / len(ious) if ious else 0.0, "n_classes": len(ious)}


# ---------------------------------------------------------------------------------------------
# Writers (tests, smoke runs): the release layouts with given or generated images / labels


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

"""Semantic-segmentation data readers (paper Tab. 6): ADE20K and Mapillary Vistas in their release layouts.

    ade = ADE20KReader(root, "training")            # root holds ADEChallengeData2016/ (or ade20k/)
    vistas = MapillaryReader(root, "training")      # root holds mapillary/
    label = ade.read_label(0)                       # (H, W) int64 class index, IGNORE_INDEX for unlabeled
    ade.present_classes(label), ade.classes         # [0, 2, ...], ("wall", "building", ...)

Their users: `data.train_dataset.SemanticTrainSource` ("[semantic] <class>" samples mixed into the
training data), `data.eval_dataset.SemanticEvalDataset` (one item per image, one expression per class
present; `evaluate` adds mIoU via `metrics.ClassIoU`), `data.synthetic_semantic` (tiny trees in these
layouts for tests).

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
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["ADE20KReader", "ADE20K_CLASSES", "IGNORE_INDEX", "MapillaryReader", "SPLIT_SHORT", "SemanticReader",
           "build_semantic_reader"]

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
SPLIT_SHORT = {"training": "train", "validation": "val", "testing": "test"}  # split names in "ade20k|semantic|val"
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


def build_semantic_reader(dataset: str, root: str | Path, split: str = "training",
                          version: str = "auto") -> SemanticReader:
    """``dataset``: "ade20k" | "mapillary"; ``version``: Mapillary's (`MapillaryReader`), ADE20K has one."""
    if dataset == "ade20k":
        return ADE20KReader(root, split)
    if dataset == "mapillary":
        return MapillaryReader(root, split, version)
    raise ValueError(f"semantic dataset {dataset!r}: choose ade20k or mapillary")

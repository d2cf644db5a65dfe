"""Evaluation datasets: one item per image with every expression of the split on it.

    ds = build_eval_dataset(root, "refcoco", "unc", "val", sam_size=1024, beit_size=224)
    item = ds[0]      # EvalItem: sam_image (3, S, S), beit_image (3, 224, 224), sentences [N],
                      # gt_masks (N, H, W) bool at the original size, ref_ids / sent_ids [N], sizes
    shard = ds.shard(rank, world_size)   # images rank, rank + W, ... (no padding, no duplicates)
    ade = SemanticEvalDataset(ADE20KReader(root, "validation"), sam_size=1024, beit_size=224)
    # SemanticEvalItem: + class_ids [N], ignore_mask (H, W); evaluate() then also reports "miou"

REFER (`ReferEvalDataset`): sentences are lower-cased and stripped (the official evaluation); empty
ones are dropped. Images are ordered by id; ``max_images`` keeps the first ``max_images`` of that
order (before sharding, so every world size evaluates the same images).

Semantic (`SemanticEvalDataset`, paper Tab. 6): one item per image, one expression per class present
(``prefix + class name``), its ``label == class`` mask; unlabeled pixels are left out of I and U by
default (how this relates to EVF-SAM's ValDataset: `evf_sam.data.semantic`).

gRefCOCO (`GReferEvalDataset`, ``grefcoco|unc|val``): a ref's mask is the union of its objects, empty
for a no-target expression; items also carry ``no_target`` per expression, and `evaluate` then scores
the split with `evf_sam.metrics.GRefMetrics` (cIoU, gIoU, N-acc, T-acc; a prediction whose area is at
most ``empty_area`` of the image counts as empty).

`data.random_data.RandomEvalDataset` (``data.kind=random`` validation) yields the same items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from evf_sam.data.refer import ReferDataset
from evf_sam.data.semantic import IGNORE_INDEX, SPLIT_SHORT, SemanticReader
from evf_sam.tokenizer import SEMANTIC_PREFIX

__all__ = ["EvalItem", "GReferEvalDataset", "GReferEvalItem", "ImageEntriesDataset", "ReferEvalDataset",
           "SemanticEvalDataset", "SemanticEvalItem",
           "build_eval_dataset"]


@dataclass
class EvalItem:
    image_id: int
    image_path: str
    sam_image: Tensor  # (3, S, S) float32, SAM-normalised and zero-padded
    beit_image: Tensor  # (3, b, b) float32, BEiT-3 input
    input_size: tuple[int, int]  # (h', w') resized before padding ((S, S) in square mode)
    original_size: tuple[int, int]  # (H, W)
    sentences: list[str]  # (N,) lower-cased, stripped
    gt_masks: Tensor  # (N, H, W) bool, one per sentence (sentences of one ref share the mask)
    ref_ids: list[int]  # (N,)
    sent_ids: list[int]  # (N,)


class ImageEntriesDataset(Dataset):
    """An evaluation split as ``entries`` [(image key, [expression, ...])], one item per image: the
    length, expression count, ``subset`` and ``shard`` that `evaluate` relies on (REFER and semantic
    splits alike). Views share everything but ``entries``."""

    entries: list[tuple[int, list]]

    @property
    def num_expressions(self) -> int:
        return sum(len(e) for _, e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def _view(self, entries: Sequence):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.entries = list(entries)
        return new

    def subset(self, max_images: int | None):
        """The first ``max_images`` images (all if None)."""
        return self if max_images is None else self._view(self.entries[:int(max_images)])

    def shard(self, rank: int, world_size: int):
        """Images ``rank, rank + world_size, ...``: disjoint, together exactly the whole split."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        return self._view(self.entries[rank::world_size])


class ReferEvalDataset(ImageEntriesDataset):
    """All expressions of one REFER split, grouped by image.

    ``entries``: [(image_id, [(ref_id, ann_id, sent_id, sentence), ...])] in image-id order.
    """

    def __init__(self, root: str | Path, dataset: str, split_by: str, split: str, *, sam_size: int = 1024,
                 beit_size: int = 224, max_images: int | None = None, reader: ReferDataset | None = None,
                 resize_mode: str = "pad"):
        self.reader = reader if reader is not None else ReferDataset(root, dataset, split_by)
        self.dataset, self.split_by, self.split = dataset, split_by, split
        self.sam_size, self.beit_size = int(sam_size), int(beit_size)
        self.resize_mode = resize_mode  # "pad" (SAM-1) | "square" (EfficientSAM, SAM-2): model.resize_mode
        per_image: dict[int, list[tuple[int, int, int, str]]] = {}
        for ref in sorted(self.reader.split_refs(split), key=lambda r: int(r["ref_id"])):
            for k, s in enumerate(ref["sentences"]):
                text = str(s.get("sent", s.get("raw", ""))).strip().lower()
                if text:
                    sid = int(s.get("sent_id", k))
                    per_image.setdefault(int(ref["image_id"]), []).append(
                        (int(ref["ref_id"]), int(ref["ann_id"]), sid, text))
        entries = sorted(per_image.items())
        if max_images is not None:
            entries = entries[:int(max_images)]
        self.entries: list[tuple[int, list[tuple[int, int, int, str]]]] = entries

    @property
    def name(self) -> str:
        return f"{self.dataset}|{self.split_by}|{self.split}"

    def __repr__(self) -> str:
        return f"ReferEvalDataset({self.name}: {len(self)} images, {self.num_expressions} expressions)"

    item_type: type = EvalItem

    def target_mask(self, target: Any, image_id: int) -> np.ndarray:
        """(H, W) uint8 ground truth of an expression's target (here: one annotation id)."""
        return self.reader.annotation_mask(target)

    def extra_fields(self, exprs: list[tuple]) -> dict[str, Any]:
        """Fields of ``item_type`` beyond `EvalItem`'s, for the image's expressions ``exprs``."""
        return {}

    def __getitem__(self, index: int) -> EvalItem:
        from evf_sam.preprocess import beit3_preprocess, load_image, sam_preprocess

        image_id, exprs = self.entries[index]
        path = self.reader.image_path(image_id)
        image = load_image(path)
        h, w = image.shape[:2]
        meta = self.reader.images[image_id]
        if (int(meta["height"]), int(meta["width"])) != (h, w):
            raise ValueError(f"{path}: image is {h}x{w} but instances.json says {meta['height']}x{meta['width']}")
        sam, input_size = sam_preprocess(image, self.sam_size, self.resize_mode, pipeline="eval")  # official eval.py
        masks: dict[Any, np.ndarray] = {}
        for _, target, _, _ in exprs:
            if target not in masks:
                masks[target] = self.target_mask(target, image_id)
        gt = torch.from_numpy(np.stack([masks[a] for _, a, _, _ in exprs]).astype(bool))  # (N, H, W)
        return self.item_type(image_id=image_id, image_path=str(path), sam_image=sam,
                              beit_image=beit3_preprocess(image, self.beit_size),
                              input_size=(int(input_size[0]), int(input_size[1])), original_size=(h, w),
                              sentences=[t for *_, t in exprs], gt_masks=gt, ref_ids=[r for r, *_ in exprs],
                              sent_ids=[s for _, _, s, _ in exprs], **self.extra_fields(exprs))


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
                 max_images: int | None = None, prefix: str = SEMANTIC_PREFIX, ignore_unlabeled: bool = False,
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
        return f"{self.reader.name}|semantic|{SPLIT_SHORT.get(self.reader.split, self.reader.split)}"

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
        sam, input_size = sam_preprocess(image, self.sam_size, self.resize_mode, pipeline="eval")  # official eval.py
        lab = torch.from_numpy(label)
        gt = torch.stack([lab == c for c in class_ids])  # (N, H, W) bool
        return SemanticEvalItem(
            image_id=int(i), image_path=str(self.reader.images[i]), sam_image=sam,
            beit_image=beit3_preprocess(image, self.beit_size),
            input_size=(int(input_size[0]), int(input_size[1])), original_size=(h, w),
            sentences=[self.prefix + self.reader.classes[c] for c in class_ids], gt_masks=gt,
            ref_ids=list(class_ids), sent_ids=list(class_ids), class_ids=list(class_ids),
            ignore_mask=(lab == IGNORE_INDEX) if self.ignore_unlabeled else None)


@dataclass
class GReferEvalItem(EvalItem):
    no_target: list[bool] = field(default_factory=list)  # (N,) the expression names no object (gt empty)


class GReferEvalDataset(ReferEvalDataset):
    """All expressions of one gRefCOCO split, grouped by image (sentences lower-cased and stripped, as
    `ReferEvalDataset`). ``entries``: [(image_id, [(ref_id, ann_ids, sent_id, sentence), ...])];
    ``ann_ids`` a tuple, ``(-1,)`` for no target. ``empty_area``: the empty-prediction threshold
    (fraction of the image area) `evaluate` scores N-acc / T-acc with. Items as `ReferEvalDataset`'s, the
    target mask being the union of the objects, plus ``no_target``."""

    no_target_split = True  # evaluate(): GRefMetrics

    def __init__(self, root: str | Path, dataset: str = "grefcoco", split_by: str = "unc", split: str = "val", *,
                 sam_size: int = 1024, beit_size: int = 224, max_images: int | None = None, reader=None,
                 resize_mode: str = "pad", empty_area: float = 0.0):
        from evf_sam.data.grefer import GReferDataset
        from evf_sam.metrics import is_empty_prediction

        is_empty_prediction(torch.zeros(1, 1, 1, dtype=torch.bool), empty_area)  # validates the fraction
        self.reader = reader if reader is not None else GReferDataset(root, dataset, split_by)
        self.dataset, self.split_by, self.split = dataset, split_by, split
        self.sam_size, self.beit_size, self.resize_mode = int(sam_size), int(beit_size), resize_mode
        self.empty_area = float(empty_area)
        per_image: dict[int, list[tuple[int, tuple[int, ...], int, str]]] = {}
        for ref in sorted(self.reader.split_refs(split), key=lambda r: int(r["ref_id"])):
            for k, s in enumerate(ref["sentences"]):
                text = str(s.get("sent", s.get("raw", ""))).strip().lower()
                if text:
                    per_image.setdefault(int(ref["image_id"]), []).append(
                        (int(ref["ref_id"]), tuple(ref["ann_id"]), int(s.get("sent_id", k)), text))
        entries = sorted(per_image.items())
        self.entries = entries[:int(max_images)] if max_images is not None else entries

    @property
    def name(self) -> str:
        return f"{self.dataset}|{self.split_by}|{self.split}"

    @property
    def num_no_target(self) -> int:
        from evf_sam.data.grefer import NO_TARGET

        return sum(a == (NO_TARGET,) for _, e in self.entries for _, a, _, _ in e)

    def __repr__(self) -> str:
        return (f"GReferEvalDataset({self.name}: {len(self)} images, {self.num_expressions} expressions, "
                f"{self.num_no_target} no-target)")

    item_type = GReferEvalItem

    def target_mask(self, target: tuple[int, ...], image_id: int) -> np.ndarray:
        """(H, W) uint8: the union of the expression's objects; all zeros for ``(-1,)`` (no target)."""
        return self.reader.target_mask(list(target), image_id)

    def extra_fields(self, exprs: list[tuple]) -> dict[str, Any]:
        from evf_sam.data.grefer import NO_TARGET

        return {"no_target": [a == (NO_TARGET,) for _, a, _, _ in exprs]}


def build_eval_dataset(root: str | Path, dataset: str, split_by: str, split: str, *, sam_size: int = 1024,
                       beit_size: int = 224, max_images: int | None = None,
                       resize_mode: str = "pad", empty_area: float = 0.0,
                       reader=None) -> ReferEvalDataset | GReferEvalDataset:
    """`ReferEvalDataset` for ``dataset|split_by|split`` (raises naming the file / split when missing);
    `GReferEvalDataset` for gRefCOCO (``empty_area``: its empty-prediction threshold, fraction of the image).
    ``reader``: an already loaded `ReferDataset` / `GReferDataset` of ``dataset|split_by`` to share."""
    from evf_sam.data.grefer import is_gref_dataset

    if is_gref_dataset(dataset):
        return GReferEvalDataset(root, dataset, split_by, split, sam_size=sam_size, beit_size=beit_size,
                                 max_images=max_images, resize_mode=resize_mode, empty_area=empty_area, reader=reader)
    return ReferEvalDataset(root, dataset, split_by, split, sam_size=sam_size, beit_size=beit_size,
                            max_images=max_images, resize_mode=resize_mode, reader=reader)

"""Answers a model can give without reading the text, scored like a model on the same split.

A referring-segmentation result means something only next to these:

- ``empty``: predict nothing (cIoU 0; gIoU counts only expressions whose ground truth is empty).
- ``union``: predict the union of every annotated object in the image, the same mask for every
  expression of the image. A model that segments "the objects" but ignores the text lands here.

Both are computed from the REFER files alone (no model), with the metric code of `evf_sam.metrics`.
On gRefCOCO splits (``grefcoco``) they are scored with `GRefMetrics`: ``empty`` is then right on every
no-target expression (N-acc 1, T-acc 0), ``union`` on none (N-acc 0, T-acc 1 when every image has an
object), so both accuracies must be read together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from evf_sam.data.refer import ReferDataset
from evf_sam.metrics import GRefMetrics, RefMetrics

__all__ = ["group_by_image", "trivial_baselines"]


def group_by_image(refer, split: str) -> tuple[dict[int, list[int]], dict[int, list[dict]]]:
    """``(anns_by_image, refs_by_image)`` of a REFER / gRefCOCO reader: every annotation id of each
    image, and each image's refs in ``split`` (the text-blind answers need both)."""
    anns_by_image: dict[int, list[int]] = {}
    for ann_id, ann in refer.annotations.items():
        anns_by_image.setdefault(int(ann["image_id"]), []).append(ann_id)
    refs_by_image: dict[int, list[dict]] = {}
    for r in refer.split_refs(split):
        refs_by_image.setdefault(int(r["image_id"]), []).append(r)
    return anns_by_image, refs_by_image


def trivial_baselines(root: str | Path, dataset: str, split_by: str, split: str,
                      max_images: int | None = None, empty_area: float = 0.0) -> dict[str, dict[str, Any]]:
    """Scores of the ``empty`` and ``union`` answers on ``dataset|split_by|split``.

    Returns ``{"empty": metrics, "union": metrics}``, each as `RefMetrics.compute` (ciou, giou,
    pr@K, n_expressions, n_images). Images are taken in sorted id order (``max_images`` first ones),
    the order `evf_sam.data.eval_dataset` uses. gRefCOCO (``dataset="grefcoco"``): `GRefMetrics` with
    ``empty_area`` (+ n_acc, t_acc, n_no_target); a ref's ground truth is the union of its objects.
    """
    from evf_sam.data.grefer import GReferDataset, is_gref_dataset

    if is_gref_dataset(dataset):
        return _gref_baselines(GReferDataset(root, dataset, split_by), split, max_images, empty_area)
    refer = ReferDataset(root, dataset, split_by)
    anns_by_image, refs_by_image = group_by_image(refer, split)
    image_ids = sorted(refs_by_image)[:max_images]
    empty, union = RefMetrics(), RefMetrics()
    for image_id in image_ids:
        masks = {a: refer.annotation_mask(a).astype(bool) for a in anns_by_image[image_id]}
        every = np.logical_or.reduce(list(masks.values()))  # (H, W): union of all objects
        for r in refs_by_image[image_id]:
            gt = masks[int(r["ann_id"])]
            n = len(r["sentences"])
            gts = np.repeat(gt[None], n, axis=0)  # (n, H, W): one per sentence of the ref
            empty.update(np.zeros_like(gts), gts)
            union.update(np.repeat(every[None], n, axis=0), gts)
        empty.add_images(1)
        union.add_images(1)
    return {"empty": empty.compute(), "union": union.compute()}


def _gref_baselines(refer, split: str, max_images: int | None, empty_area: float) -> dict[str, dict[str, Any]]:
    anns_by_image, refs_by_image = group_by_image(refer, split)
    empty, union = GRefMetrics(empty_area=empty_area), GRefMetrics(empty_area=empty_area)
    for image_id in sorted(refs_by_image)[:max_images]:
        info = refer.image_info(image_id)
        every = np.zeros((int(info["height"]), int(info["width"])), dtype=bool)  # (H, W)
        for a in anns_by_image.get(image_id, []):
            every |= refer.annotation_mask(a).astype(bool)
        for r in refs_by_image[image_id]:
            n = len(r["sentences"])
            gts = np.repeat(refer.ref_mask(r).astype(bool)[None], n, axis=0)  # (n, H, W)
            nt = [r["no_target"]] * n
            empty.update(np.zeros_like(gts), gts, nt)
            union.update(np.repeat(every[None], n, axis=0), gts, nt)
        empty.add_images(1)
        union.add_images(1)
    return {"empty": empty.compute(), "union": union.compute()}

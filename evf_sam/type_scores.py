"""Scores per expression type, for REFER data whose sentences carry a ``"type"`` (the synthetic
"grounded" mode, `evf_sam.data.synthetic.EXPRESSION_TYPES`).

    scores = type_scores(root, "refcoco", "unc", "val", masks_dir="masks/refcoco_unc_val")
    scores["model"]["ordinal"].compute()   # {"ciou", "giou", ...} of the saved predictions
    scores["union"]["ordinal"].compute()   # the text-blind union-of-all-objects answer, same sentences

``masks_dir`` holds one PNG per expression, ``<image_id:012d>_<ref_id>_<sent_id>.png`` (non-zero =
foreground): what ``evf_sam.engine.evaluate.evaluate(..., save_masks_dir=...)`` writes. The
baselines are those of `evf_sam.engine.baselines` (``empty``: nothing; ``union``: every annotated
object of the image), computed on the same sentences, so each type's figure has its own floor.
Accumulators are `RefMetrics` so that splits can be merged (`RefMetrics.merge`) before computing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evf_sam.data.refer import ReferDataset
from evf_sam.engine.baselines import group_by_image
from evf_sam.metrics import RefMetrics

__all__ = ["ALL", "UNTYPED", "merge_scores", "type_scores"]

ALL = "all"  # every sentence of the split, whatever its type
UNTYPED = "untyped"  # sentences without a "type" field (e.g. the "easy" synthetic data, real REFER data)


def _load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"no saved prediction {str(path)!r}: evaluate the split with save_masks_dir "
                                "pointing at this directory first")
    m = np.asarray(Image.open(path)) > 0
    if m.shape != shape:
        raise ValueError(f"{str(path)!r} is {m.shape[1]}x{m.shape[0]}, the image is {shape[1]}x{shape[0]}")
    return m


def type_scores(root: str | Path, dataset: str, split_by: str, split: str, *, masks_dir: str | Path | None = None,
                max_images: int | None = None) -> dict[str, dict[str, RefMetrics]]:
    """``{"empty": {type: RefMetrics}, "union": {...}[, "model": {...}]}`` on ``dataset|split_by|split``.

    Types are the sentences' ``"type"`` values, `UNTYPED` for sentences without one, plus `ALL`.
    ``"model"`` (the saved predictions in ``masks_dir``) only when ``masks_dir`` is given. Images in
    sorted id order, the first ``max_images`` (the order `evf_sam.data.eval_dataset` uses).
    ``n_images`` of a type counts the images with at least one sentence of that type.
    """
    refer = ReferDataset(root, dataset, split_by)
    anns_by_image, refs_by_image = group_by_image(refer, split)
    answers = ["empty", "union"] + (["model"] if masks_dir is not None else [])
    out: dict[str, dict[str, RefMetrics]] = {a: {} for a in answers}
    for image_id in sorted(refs_by_image)[:max_images]:
        masks = {a: refer.annotation_mask(a).astype(bool) for a in anns_by_image[image_id]}
        every = np.logical_or.reduce(list(masks.values()))  # (H, W): union of all objects
        seen: set[str] = set()
        for r in refs_by_image[image_id]:
            gt = masks[int(r["ann_id"])]
            for s in r["sentences"]:
                preds = {"empty": np.zeros_like(gt), "union": every}
                if masks_dir is not None:
                    name = f"{image_id:012d}_{r['ref_id']}_{s['sent_id']}.png"
                    preds["model"] = _load_mask(Path(masks_dir) / name, gt.shape)
                for kind in (ALL, str(s.get("type", UNTYPED))):
                    seen.add(kind)
                    for a in answers:
                        out[a].setdefault(kind, RefMetrics()).update(preds[a], gt)
        for kind in seen:
            for a in answers:
                out[a][kind].add_images(1)
    return out


def merge_scores(parts: list[dict[str, dict[str, RefMetrics]]]) -> dict[str, dict[str, RefMetrics]]:
    """Sums `type_scores` results (e.g. of several splits) answer by answer and type by type."""
    out: dict[str, dict[str, RefMetrics]] = {}
    for part in parts:
        for answer, by_type in part.items():
            for kind, m in by_type.items():
                out.setdefault(answer, {}).setdefault(kind, RefMetrics()).merge(m)
    return out

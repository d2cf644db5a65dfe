"""gRefCOCO reader (generalised referring expressions: one expression, any number of objects) and writer.

    g = GReferDataset("/data")                           # /data/refer_seg/grefcoco/{instances.json,grefs(unc).json}
    for ref in g.split_refs("val"):
        mask = g.ref_mask(ref)                           # (H, W) uint8 {0, 1}: union of the ref's objects
        ref["no_target"]                                 # True: the expression names nothing in the image
        texts = [s["sent"] for s in ref["sentences"]]

Layout (data/README.md; the official release, read by hustvl/EVF-SAM utils/grefer.py ``G_REFER`` and
utils/refer_seg_dataset.py)::

    <root>/refer_seg/
      images/mscoco/images/train2014/COCO_train2014_000000xxxxxx.jpg   (COCO train2014, as RefCOCO)
      grefcoco/instances.json
      grefcoco/grefs(unc).json    or    grefcoco/grefs(unc).p           (.p first, as G_REFER)

A gRefCOCO ref is a REFER ref whose ``ann_id`` (and ``category_id``) is a *list*: the objects the
expression refers to, all of them. The conventions we match (hustvl/EVF-SAM 9935dc5):

- refs file: ``grefs(<split_by>).p`` if it exists, else ``grefs(<split_by>).json`` (``G_REFER.__init__``);
  ``instances.json`` next to it; split_by ``unc`` is the only one the release has.
- images: ``refer_seg/images/mscoco/images/train2014`` (utils/refer_seg_dataset.py joins that for every
  dataset but refclef; G_REFER's own ``IMAGE_DIR`` is only used by its plotting helpers).
- no target: ``ann_id == [-1]`` (``G_REFER.createIndex`` maps annotation id -1 to None,
  ``getMaskByRef`` returns an all-zero mask of the image's size for ``[-1]``, and
  utils/refer_seg_dataset.py asserts that -1 only ever appears alone). A -1 next to real ids is
  refused here (`ValueError`). The files carry no separate flag; this reader adds
  ``ref["no_target"]`` (bool) derived from ``ann_id``, and if a file does carry a ``no_target`` key
  it must agree.
- a scalar ``ann_id`` / ``category_id`` is read as a one-element list (``load_grefcoco_json`` in
  utils/grefcoco.py, and the dataset authors' converter henghuiding/gRefCOCO
  mdetr/scripts/fine-tuning/grefexp_coco_format.py, which also tests ``ann_id == [-1]``).
- mask: the union of the listed annotations' masks, crowd or not (utils/refer_seg_dataset.py, the
  training reader, ORs every listed annotation; ReLA's / G_REFER's evaluation helpers drop ``iscrowd``
  objects, which gRefCOCO's referred objects, drawn from RefCOCO's, are not).

``.p`` files are read with `evf_sam.data.refer.RestrictedUnpickler` (plain containers only: a pickle
that would construct an object or call a function is refused with `UnsafePickleError`); ``.json``
with the json module.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from evf_sam.atomic import atomic_write_bytes
from evf_sam.data.refer import ReferDataset, _decode_bytes, _plain, load_refs_pickle, refer_dir

__all__ = ["GREF_DATASETS", "GREF_IMAGE_DIR", "NO_TARGET", "GReferDataset", "grefs_path", "is_gref_dataset",
           "load_grefs", "normalize_ann_ids", "write_grefer"]

# dataset -> split-by variants of the release
GREF_DATASETS: dict[str, tuple[str, ...]] = {"grefcoco": ("unc",)}
GREF_IMAGE_DIR = "images/mscoco/images/train2014"
NO_TARGET = -1  # the annotation id of "no object" (alone in the list)
_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def is_gref_dataset(dataset: str) -> bool:
    return dataset in GREF_DATASETS


def _check_names(dataset: str, split_by: str) -> None:
    if dataset not in GREF_DATASETS:
        raise ValueError(f"unknown gRefCOCO dataset {dataset!r}; expected one of {sorted(GREF_DATASETS)}")
    if split_by not in GREF_DATASETS[dataset]:
        raise ValueError(f"unknown split_by {split_by!r} for {dataset}; the release has {list(GREF_DATASETS[dataset])}")


def grefs_path(root: str | Path, dataset: str = "grefcoco", split_by: str = "unc") -> Path:
    """The refs file G_REFER would read: ``grefs(<split_by>).p`` if present, else ``grefs(<split_by>).json``
    (returned even when absent, so an error can name it)."""
    _check_names(dataset, split_by)
    d = refer_dir(root) / dataset
    p = d / f"grefs({split_by}).p"
    return p if p.is_file() else d / f"grefs({split_by}).json"


def normalize_ann_ids(ann_id: Any, *, where: str = "ref") -> list[int]:
    """``ann_id`` as a list of ints; ``[-1]`` is "no target"; -1 with other ids is refused."""
    ids = [int(a) for a in (ann_id if isinstance(ann_id, (list, tuple)) else [ann_id])]
    if not ids:
        raise ValueError(f"{where}: empty ann_id list (a no-target expression has ann_id [-1] in gRefCOCO)")
    if NO_TARGET in ids and ids != [NO_TARGET]:
        raise ValueError(f"{where}: ann_id {ids} mixes -1 (no target) with object ids; -1 must stand alone")
    return ids


def load_grefs(path: str | Path) -> list[dict[str, Any]]:
    """Reads ``grefs(*).json`` / ``grefs(*).p`` and normalises every ref: ``ann_id`` / ``category_id``
    lists of ints, ``no_target`` (bool) added."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gRefCOCO refs file not found: {str(path)!r} (grefs(unc).json or grefs(unc).p; "
                                "see data/README.md)")
    if path.suffix == ".p":
        refs = load_refs_pickle(path)  # RestrictedUnpickler: plain containers only
    else:
        with open(path, "rb") as f:
            refs = _decode_bytes(json.load(f))
        if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
            raise ValueError(f"{str(path)!r}: expected a JSON list of ref objects, got {type(refs).__name__}")
    out = []
    for i, r in enumerate(refs):
        missing = [k for k in _KEYS if k not in r]
        if missing:
            raise ValueError(f"{str(path)!r}: ref #{i} (ref_id={r.get('ref_id')!r}) lacks keys {missing}")
        where = f"{path.name}: ref_id {r['ref_id']}"
        ids = normalize_ann_ids(r["ann_id"], where=where)
        no_target = ids == [NO_TARGET]
        if "no_target" in r and bool(r["no_target"]) != no_target:
            raise ValueError(f"{where}: no_target={r['no_target']!r} disagrees with ann_id {ids}")
        cats = r.get("category_id", [])
        r = dict(r, ann_id=ids, no_target=no_target,
                 category_id=[int(c) for c in (cats if isinstance(cats, (list, tuple)) else [cats])])
        out.append(r)
    return out


class GReferDataset(ReferDataset):
    """gRefCOCO ``(root, dataset="grefcoco", split_by="unc")`` with `ReferDataset`'s attributes and
    accessors (``refs``, ``images``, ``annotations``, ``categories``, ``image_dir``, ``splits``,
    ``split_refs``, ``image_ids``, ``image_path``, ``annotation_mask``, ...). Every ref's ``ann_id`` is
    a list (``[-1]``: no target) and has ``no_target``; `target_mask` / `ref_mask` give the union mask.
    """

    def __init__(self, root: str | Path, dataset: str = "grefcoco", split_by: str = "unc", *,
                 check_refs: bool = True):
        _check_names(dataset, split_by)
        self.root, self.dataset, self.split_by = Path(root), dataset, split_by
        base = refer_dir(root)
        inst = base / dataset / "instances.json"
        self.refs_file = grefs_path(root, dataset, split_by)
        for f in (inst, self.refs_file):
            if not f.is_file():
                raise FileNotFoundError(f"{dataset}|{split_by}: {str(f)!r} not found (gRefCOCO: instances.json and "
                                        f"grefs({split_by}).json or .p under {str(base / dataset)!r}; see "
                                        "data/README.md)")
        self._load_instances(inst)
        self.refs: list[dict[str, Any]] = load_grefs(self.refs_file)
        self.image_dir = base / GREF_IMAGE_DIR
        # ReferDataset's degenerate-polygon bookkeeping (data.check reads it): not applied here, since an
        # object of < 3 points adds nothing to a union mask and a no-target ref has no polygon anyway
        self.degenerate_parts, self.empty_ann_ids, self.skipped_refs = 0, set(), []
        self._by_split: dict[str, list[dict]] = {}
        for r in self.refs:
            self._by_split.setdefault(str(r["split"]), []).append(r)
        if check_refs:
            self._check_refs()

    def __repr__(self) -> str:
        n_nt = sum(r["no_target"] for r in self.refs)
        counts = ", ".join(f"{s}={len(v)}" for s, v in self._by_split.items())
        return (f"GReferDataset({self.dataset}|{self.split_by}: {len(self.refs)} refs [{counts}], {n_nt} no-target, "
                f"{len(self.images)} images)")

    def _check_refs(self) -> None:
        bad_ann = [(r["ref_id"], a) for r in self.refs if not r["no_target"] for a in r["ann_id"]
                   if a not in self.annotations]
        bad_img = [(r["ref_id"], r["image_id"]) for r in self.refs if int(r["image_id"]) not in self.images]
        wrong_img = [(r["ref_id"], a) for r in self.refs if not r["no_target"] for a in r["ann_id"]
                     if a in self.annotations and int(self.annotations[a]["image_id"]) != int(r["image_id"])]
        msgs = []
        if bad_ann:
            msgs.append(f"{len(bad_ann)} ref object(s) missing from instances.json (ref_id, ann_id): {bad_ann[:5]}")
        if bad_img:
            msgs.append(f"{len(bad_img)} ref(s) point at images missing from instances.json (ref_id, image_id): "
                        f"{bad_img[:5]}")
        if wrong_img:
            msgs.append(f"{len(wrong_img)} ref object(s) belong to another image (ref_id, ann_id): {wrong_img[:5]}")
        if msgs:
            raise ValueError(f"{self.dataset}|{self.split_by} ({str(self.refs_file)!r}): " + "; ".join(msgs))

    def target_mask(self, ann_ids: Sequence[int] | int, image_id: int) -> np.ndarray:
        """(H, W) uint8 {0, 1}: the union of ``ann_ids``' masks; all zeros for ``[-1]`` (no target)."""
        ids = normalize_ann_ids(ann_ids, where=f"image {image_id}")
        info = self.image_info(image_id)
        out = np.zeros((int(info["height"]), int(info["width"])), dtype=np.uint8)
        if ids == [NO_TARGET]:
            return out
        for a in ids:
            out |= self.annotation_mask(a)
        return out

    def ref_mask(self, ref: dict) -> np.ndarray:
        """(H, W) uint8 {0, 1} ground truth of ``ref`` (union of its objects; empty when no target)."""
        return self.target_mask(ref["ann_id"], ref["image_id"])


def write_grefer(root: str | Path, images: Sequence[dict], annotations: Sequence[dict], categories: Sequence[dict],
                 refs: Iterable[dict], *, dataset: str = "grefcoco", split_by: str = "unc",
                 fmt: str = "json") -> Path:
    """Writes ``<root>/refer_seg/<dataset>/instances.json`` and ``grefs(<split_by>).<fmt>`` (``json``, as
    the release, or ``p``: a protocol-2 pickle of plain containers). Refs carry ``ann_id`` lists
    (``[-1]`` for no target) and no ``no_target`` key (the release has none). Every object id must be
    among ``annotations`` and on the ref's image. The other-format refs file is removed, so the
    reader's choice (``.p`` first) is never stale. Returns the dataset directory."""
    _check_names(dataset, split_by)
    if fmt not in ("json", "p"):
        raise ValueError(f"write_grefer: fmt must be 'json' or 'p', got {fmt!r}")
    d = refer_dir(root) / dataset
    img_ids = {int(im["id"]) for im in images}
    ann_img = {int(a["id"]): int(a["image_id"]) for a in annotations}
    out = []
    for r in refs:
        missing = [k for k in _KEYS if k not in r]
        if missing:
            raise ValueError(f"write_grefer: ref {r.get('ref_id')!r} lacks keys {missing}")
        ids = normalize_ann_ids(r["ann_id"], where=f"write_grefer: ref {r['ref_id']}")
        if int(r["image_id"]) not in img_ids:
            raise ValueError(f"write_grefer: ref {r['ref_id']} points at image_id {r['image_id']}, not given")
        bad = [a for a in ids if a != NO_TARGET and ann_img.get(a) != int(r["image_id"])]
        if bad:
            raise ValueError(f"write_grefer: ref {r['ref_id']}: ann_id(s) {bad} are not annotations of image "
                             f"{r['image_id']}")
        out.append({k: v for k, v in r.items() if k != "no_target"} | {"ann_id": ids})
    _plain(out, "refs")
    coco = {"info": {"description": f"{dataset} ({split_by})"}, "images": list(images),
            "annotations": list(annotations), "categories": list(categories)}
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(d / "instances.json", json.dumps(coco, separators=(",", ":")).encode())
    path = d / f"grefs({split_by}).{fmt}"
    data = pickle.dumps(out, protocol=2) if fmt == "p" else json.dumps(out, separators=(",", ":")).encode()
    atomic_write_bytes(path, data)
    (d / f"grefs({split_by}).{'json' if fmt == 'p' else 'p'}").unlink(missing_ok=True)
    return d

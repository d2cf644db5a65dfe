"""REFER reader (RefCOCO, RefCOCO+, RefCOCOg, RefCLEF) and the writer used by synthetic data and tests.

    r = ReferDataset("/data", "refcoco", "unc")          # /data/refer_seg/refcoco/{instances.json,refs(unc).p}
    for ref in r.split_refs("val"):
        mask = r.annotation_mask(ref["ann_id"])           # (H, W) uint8 in {0, 1}, original image size
        path = r.image_path(ref["image_id"])              # .../images/mscoco/images/train2014/COCO_train2014_*.jpg
        texts = [s["sent"] for s in ref["sentences"]]

Layout (docs: data/README.md, reference: ../shared/reference/FORMATS.md)::

    <root>/refer_seg/
      images/mscoco/images/train2014/COCO_train2014_000000xxxxxx.jpg   (RefCOCO / + / g)
      images/saiapr_tc-12/...                                          (RefCLEF)
      <dataset>/instances.json  <dataset>/refs(<split_by>).p

``refs(*).p`` is a pickle (Python 2 for the official files). It is read by `RestrictedUnpickler`,
which admits only plain containers and scalars: any pickle that names a class or function (the
way a pickle executes code, e.g. ``os.system`` through ``__reduce__``) is refused with
`UnsafePickleError`, so a downloaded refs file cannot run code.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, Iterable, Sequence

import warnings

import numpy as np

from evf_sam.atomic import atomic_write_bytes  # re-exported: synthetic.py writes through it

__all__ = ["DATASETS", "IMAGE_DIRS", "MIN_POLYGON_COORDS", "PAPER_SPLITS", "ReferDataset", "RestrictedUnpickler",
           "UnsafePickleError", "decode_segmentation", "polygon_stats", "load_refs_pickle", "parse_split_name", "refer_dir", "refs_path", "write_refer", "atomic_write_bytes"]

# dataset -> the split-by variants the REFER release ships
DATASETS: dict[str, tuple[str, ...]] = {
    "refcoco": ("unc", "google"),
    "refcoco+": ("unc",),
    "refcocog": ("umd", "google"),
    "refclef": ("unc", "berkeley"),
}
# dataset -> image directory under refer_seg/
IMAGE_DIRS: dict[str, str] = {
    "refcoco": "images/mscoco/images/train2014",
    "refcoco+": "images/mscoco/images/train2014",
    "refcocog": "images/mscoco/images/train2014",
    "refclef": "images/saiapr_tc-12",
}
_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


class UnsafePickleError(pickle.UnpicklingError):
    """A refs pickle tried to construct an object (only plain containers and scalars are allowed)."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for REFER's refs files: dicts, lists, tuples, str / bytes, numbers, bool, None.

    ``find_class`` refuses every global, so no class is instantiated and no function is called.
    Python 2 ``str`` objects are decoded as latin-1 (the official files are Python 2 pickles).
    """

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):  # noqa: D102
        raise UnsafePickleError(
            f"{self.source}: refusing to load {module}.{name}: a REFER refs file holds only plain containers "
            "(list / dict / str / numbers); this pickle would construct an object or call a function, so it was "
            "not loaded. Re-download the file from the REFER release (see data/README.md).")

    def persistent_load(self, pid):  # noqa: D102
        raise UnsafePickleError(f"{self.source}: refusing a persistent id {pid!r} (not a plain-container pickle)")


def load_refs_pickle(path: str | Path) -> list[dict[str, Any]]:
    """Loads a ``refs(*).p`` file with `RestrictedUnpickler`; bytes values are decoded as latin-1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"REFER refs file not found: {str(path)!r} (see data/README.md for the layout)")
    try:
        data = RestrictedUnpickler(io.BytesIO(path.read_bytes()), source=str(path)).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            UnicodeDecodeError) as e:  # what a truncated or garbage pickle raises
        raise ValueError(f"{str(path)!r} is not a readable refs pickle, truncated or corrupt ({type(e).__name__}: "
                         f"{e}); re-download it from the REFER release (see data/README.md)") from None
    data = _decode_bytes(data)
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{str(path)!r}: expected a pickled list of ref dicts, got {type(data).__name__}")
    for i, r in enumerate(data):
        missing = [k for k in _REF_KEYS if k not in r]
        if missing:
            raise ValueError(f"{str(path)!r}: ref #{i} (ref_id={r.get('ref_id')!r}) lacks keys {missing}")
    return data


def _decode_bytes(x):
    if isinstance(x, bytes):
        return x.decode("latin1")
    if isinstance(x, list):
        return [_decode_bytes(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_decode_bytes(v) for v in x)
    if isinstance(x, dict):
        return {_decode_bytes(k): _decode_bytes(v) for k, v in x.items()}
    return x


def refer_dir(root: str | Path) -> Path:
    """``root/refer_seg`` (``root`` may also be the refer_seg directory itself)."""
    root = Path(root)
    if (root / "refer_seg").is_dir() or root.name != "refer_seg":
        return root / "refer_seg"
    return root


def _check_names(dataset: str, split_by: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown REFER dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    if split_by not in DATASETS[dataset]:
        raise ValueError(f"unknown split_by {split_by!r} for {dataset}; the REFER release has "
                         f"{list(DATASETS[dataset])}")


# the paper's 8 evaluation splits, in Table 2's column order
PAPER_SPLITS: tuple[str, ...] = (
    "refcoco|unc|val", "refcoco|unc|testA", "refcoco|unc|testB",
    "refcoco+|unc|val", "refcoco+|unc|testA", "refcoco+|unc|testB",
    "refcocog|umd|val", "refcocog|umd|test",
)


def parse_split_name(name: str) -> tuple[str, str, str]:
    """``"refcoco|unc|val"`` -> ``("refcoco", "unc", "val")``; dataset and split_by are checked (REFER
    datasets, and gRefCOCO's ``grefcoco|unc``)."""
    parts = [p.strip() for p in str(name).split("|")]
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"split name {name!r} must be 'dataset|split_by|split', e.g. 'refcoco|unc|val'")
    from evf_sam.data.grefer import GREF_DATASETS  # gRefCOCO splits: 'grefcoco|unc|val'

    if parts[0] in GREF_DATASETS:
        if parts[1] not in GREF_DATASETS[parts[0]]:
            raise ValueError(f"unknown split_by {parts[1]!r} for {parts[0]}; the release has "
                             f"{list(GREF_DATASETS[parts[0]])}")
        return parts[0], parts[1], parts[2]
    _check_names(parts[0], parts[1])
    return parts[0], parts[1], parts[2]


def refs_path(root: str | Path, dataset: str, split_by: str) -> Path:
    """``<root>/refer_seg/<dataset>/refs(<split_by>).p``."""
    _check_names(dataset, split_by)
    return refer_dir(root) / dataset / f"refs({split_by}).p"


# A polygon needs 3 points (6 numbers) to enclose any area.
MIN_POLYGON_COORDS = 6


def polygon_stats(segmentation: Any) -> tuple[int, int]:
    """(polygon parts, parts with fewer than 3 points) of a COCO segmentation; (0, 0) for RLE."""
    if not isinstance(segmentation, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in segmentation):
        return 0, 0
    return len(segmentation), sum(1 for p in segmentation if len(p) < MIN_POLYGON_COORDS)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation -> (H, W) uint8 {0, 1}.

    Accepts polygons (a list of ``[x0, y0, x1, y1, ...]`` parts, merged by union), an RLE dict with
    compressed (str / bytes) or uncompressed (list) ``counts``, or a list of RLE dicts (merged).
    """
    from pycocotools import mask as mask_utils

    h, w = int(height), int(width)
    if isinstance(segmentation, dict):
        rles = [segmentation]
    elif isinstance(segmentation, (list, tuple)):
        if len(segmentation) == 0:
            return np.zeros((h, w), dtype=np.uint8)
        if all(isinstance(p, (list, tuple)) for p in segmentation):  # polygons
            polys = [list(map(float, p)) for p in segmentation if len(p) >= 6]
            if not polys:
                return np.zeros((h, w), dtype=np.uint8)
            rles = mask_utils.frPyObjects(polys, h, w)
        elif all(isinstance(p, dict) for p in segmentation):
            rles = list(segmentation)
        else:
            raise ValueError("segmentation must be polygons (lists of numbers) or RLE dicts, got a mix")
    else:
        raise ValueError(f"unsupported segmentation type {type(segmentation).__name__}")
    out = []
    for r in rles:
        counts = r["counts"]
        size = [int(s) for s in r.get("size", (h, w))]
        if isinstance(counts, list):  # uncompressed RLE
            r = mask_utils.frPyObjects({"counts": counts, "size": size}, size[0], size[1])
        elif isinstance(counts, str):
            r = {"counts": counts.encode("ascii"), "size": size}
        else:
            r = {"counts": counts, "size": size}
        out.append(r)
    m = mask_utils.decode(mask_utils.merge(out, intersect=False) if len(out) > 1 else out[0])
    if m.shape != (h, w):
        raise ValueError(f"segmentation decodes to {m.shape}, but the image is {(h, w)}")
    return (m > 0).astype(np.uint8)


class ReferDataset:
    """One REFER dataset variant: ``(root, dataset, split_by)``.

    Attributes:
        refs:         all refs of the file (dicts ``{ref_id, ann_id, image_id, category_id, split,
                      file_name, sent_ids, sentences: [{sent_id, sent, raw, tokens}]}``)
        images:       image_id -> ``{id, file_name, height, width}`` (instances.json)
        annotations:  ann_id -> COCO annotation
        categories:   category_id -> category dict
        image_dir:    directory of the image files
    """

    def __init__(self, root: str | Path, dataset: str, split_by: str, *, check_refs: bool = True):
        _check_names(dataset, split_by)
        self.root, self.dataset, self.split_by = Path(root), dataset, split_by
        base = refer_dir(root)
        inst = base / dataset / "instances.json"
        self.refs_file = base / dataset / f"refs({split_by}).p"
        for f in (inst, self.refs_file):
            if not f.is_file():
                raise FileNotFoundError(f"{dataset}|{split_by}: {str(f)!r} not found (see data/README.md for the "
                                        "REFER layout and downloads; `python -m evf_sam.data.check ROOT` lists "
                                        "what is missing)")
        self._load_instances(inst)
        self.refs: list[dict[str, Any]] = load_refs_pickle(self.refs_file)
        self.image_dir = base / IMAGE_DIRS[dataset]
        self._count_degenerate_polygons()
        self._by_split: dict[str, list[dict]] = {}
        for r in self.refs:
            if int(r["ann_id"]) not in self.empty_ann_ids:
                self._by_split.setdefault(str(r["split"]), []).append(r)
        if check_refs:
            self._check_refs()

    def _load_instances(self, inst: Path) -> None:
        """``images`` / ``annotations`` / ``categories`` from a COCO ``instances.json``; a file that is not a
        JSON object is a ValueError naming it."""
        try:
            with open(inst, "rb") as f:
                coco = json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(inst)!r} is not valid JSON, truncated or corrupt ({e}); re-download it") from None
        if not isinstance(coco, dict):
            raise ValueError(f"{str(inst)!r} holds a JSON {type(coco).__name__}, not a COCO object with images / "
                             f"annotations / categories; re-download it")
        self.images: dict[int, dict] = {int(im["id"]): im for im in coco.get("images", [])}
        self.annotations: dict[int, dict] = {int(a["id"]): a for a in coco.get("annotations", [])}
        self.categories: dict[int, dict] = {int(c["id"]): c for c in coco.get("categories", [])}

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(v)}" for s, v in self._by_split.items())
        return f"ReferDataset({self.dataset}|{self.split_by}: {len(self.refs)} refs [{counts}], {len(self.images)} images)"

    def _count_degenerate_polygons(self) -> None:
        """Annotations (of this file's refs) with polygon parts of fewer than 3 points.

        Such a part encloses no area: dropping it never changes a mask. An annotation with no part
        of 3 or more points has no target region at all; its refs are skipped (left out of
        `split_refs` and training), with a warning: see docs/DESIGN.md, "Degenerate polygons".
        ``self.refs`` keeps every ref of the file (e.g. to keep evaluation images out of training).
        """
        self.degenerate_parts = 0  # parts of < 3 points, in annotations that refs use
        self.empty_ann_ids: set[int] = set()
        for ann_id in {int(r["ann_id"]) for r in self.refs}:
            ann = self.annotations.get(ann_id)
            if ann is None:
                continue
            parts, short = polygon_stats(ann.get("segmentation"))
            self.degenerate_parts += short
            if parts == short and isinstance(ann.get("segmentation"), (list, tuple)) and \
                    all(isinstance(p, (list, tuple)) for p in ann["segmentation"]):
                self.empty_ann_ids.add(ann_id)
        self.skipped_refs = [r for r in self.refs if int(r["ann_id"]) in self.empty_ann_ids]
        if self.degenerate_parts:
            n_sent = sum(len(r["sentences"]) for r in self.skipped_refs)
            warnings.warn(
                f"{self.dataset}|{self.split_by}: {self.degenerate_parts} polygon part(s) with fewer than 3 points "
                f"in instances.json (no area; dropped); {len(self.empty_ann_ids)} annotation(s) have no polygon of 3+ "
                f"points (ann_ids {sorted(self.empty_ann_ids)[:5]}), so their {len(self.skipped_refs)} ref(s) / "
                f"{n_sent} sentence(s) are skipped. `python -m evf_sam.data.check` lists them per split.",
                stacklevel=3)

    def _check_refs(self) -> None:
        bad_ann = [(r["ref_id"], r["ann_id"]) for r in self.refs if int(r["ann_id"]) not in self.annotations]
        bad_img = [(r["ref_id"], r["image_id"]) for r in self.refs if int(r["image_id"]) not in self.images]
        msgs = []
        if bad_ann:
            msgs.append(f"{len(bad_ann)} ref(s) point at annotations missing from instances.json "
                        f"(ref_id, ann_id): {bad_ann[:5]}")
        if bad_img:
            msgs.append(f"{len(bad_img)} ref(s) point at images missing from instances.json "
                        f"(ref_id, image_id): {bad_img[:5]}")
        if msgs:
            raise ValueError(f"{self.dataset}|{self.split_by} ({str(self.refs_file)!r}): " + "; ".join(msgs))

    # -- splits --------------------------------------------------------------------------------

    @property
    def splits(self) -> list[str]:
        """Splits present in the refs file, in file order (e.g. train, val, testA, testB)."""
        return list(self._by_split)

    def split_refs(self, split: str) -> list[dict[str, Any]]:
        """Refs of ``split``; ValueError naming the available splits if it is not in the file."""
        if split not in self._by_split:
            raise ValueError(f"{self.dataset}|{self.split_by} has no split {split!r}; splits in "
                             f"{str(self.refs_file)!r}: {self.splits}")
        return self._by_split[split]

    def image_ids(self, split: str | None = None) -> list[int]:
        """Sorted ids of the images that have refs (in ``split``, or in any split)."""
        refs = self.refs if split is None else self.split_refs(split)
        return sorted({int(r["image_id"]) for r in refs})

    def sentences(self, split: str | None = None) -> list[dict[str, Any]]:
        """Flat list of ``{sent_id, sent, raw, ref_id, ann_id, image_id, split}`` for ``split`` (or all)."""
        refs = self.refs if split is None else self.split_refs(split)
        out = []
        for r in refs:
            for s in r["sentences"]:
                out.append({"sent_id": s.get("sent_id"), "sent": s["sent"], "raw": s.get("raw", s["sent"]),
                            "ref_id": r["ref_id"], "ann_id": r["ann_id"], "image_id": r["image_id"],
                            "split": r["split"]})
        return out

    # -- images and masks ----------------------------------------------------------------------

    def has_image(self, image_id: int) -> bool:
        return int(image_id) in self.images

    def image_info(self, image_id: int) -> dict:
        try:
            return self.images[int(image_id)]
        except KeyError:
            raise KeyError(f"{self.dataset}|{self.split_by}: image_id {image_id} is not in "
                           f"{str(self.root / 'refer_seg' / self.dataset / 'instances.json')!r}") from None

    def image_path(self, image_id: int, *, must_exist: bool = False) -> Path:
        """Path of the image file; with ``must_exist`` a FileNotFoundError names it if absent."""
        p = self.image_dir / self.image_info(image_id)["file_name"]
        if must_exist and not p.is_file():
            raise FileNotFoundError(f"{self.dataset}|{self.split_by}: image {image_id} not found at {str(p)!r} "
                                    "(see data/README.md for where the images go)")
        return p

    def annotation_mask(self, ann_id: int) -> np.ndarray:
        """(H, W) uint8 {0, 1} mask of annotation ``ann_id`` at its image's original size."""
        try:
            ann = self.annotations[int(ann_id)]
        except KeyError:
            raise KeyError(f"{self.dataset}|{self.split_by}: ann_id {ann_id} is not in instances.json") from None
        info = self.image_info(ann["image_id"])
        try:
            return decode_segmentation(ann["segmentation"], info["height"], info["width"])
        except Exception as e:
            raise ValueError(f"{self.dataset}|{self.split_by}: cannot decode the segmentation of ann_id {ann_id} "
                             f"(image {ann['image_id']}): {e}") from e

    ann_mask = annotation_mask  # the short name (tests/test_refer.py asserts both)


# ---------------------------------------------------------------------------------------------
# Writer


def write_refer(root: str | Path, dataset: str, split_by: str, images: Sequence[dict],
                annotations: Sequence[dict], categories: Sequence[dict], refs: Iterable[dict]) -> Path:
    """Writes ``<root>/refer_seg/<dataset>/instances.json`` and ``refs(<split_by>).p`` (REFER layout).

    The refs file is a protocol-2 pickle of plain containers (what the official files hold, so
    `load_refs_pickle` reads it). Image files are the caller's (under `IMAGE_DIRS[dataset]`).
    Every ref must point at a given annotation and image. Returns the dataset directory.
    """
    path = refs_path(root, dataset, split_by)
    refs = [dict(r) for r in refs]
    img_ids = {int(im["id"]) for im in images}
    ann_ids = {int(a["id"]) for a in annotations}
    for r in refs:
        missing = [k for k in _REF_KEYS if k not in r]
        if missing:
            raise ValueError(f"write_refer: ref {r.get('ref_id')!r} lacks keys {missing}")
        if int(r["ann_id"]) not in ann_ids or int(r["image_id"]) not in img_ids:
            raise ValueError(f"write_refer: ref {r['ref_id']} points at ann_id {r['ann_id']} / image_id "
                             f"{r['image_id']}, not among the given annotations / images")
    _plain(refs, "refs")
    coco = {"info": {"description": f"{dataset} ({split_by})"}, "images": list(images),
            "annotations": list(annotations), "categories": list(categories)}
    atomic_write_bytes(path.parent / "instances.json", json.dumps(coco, separators=(",", ":")).encode())
    atomic_write_bytes(path, pickle.dumps(refs, protocol=2))
    return path.parent




def _plain(x, where: str) -> None:
    if isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            _plain(v, f"{where}[{i}]")
    elif isinstance(x, dict):
        for k, v in x.items():
            _plain(k, f"{where} key")
            _plain(v, f"{where}[{k!r}]")
    elif not (x is None or type(x) in (str, bytes, int, float, bool)):
        raise TypeError(f"write_refer: {where} is a {type(x).__name__}; refs hold plain containers and scalars only")

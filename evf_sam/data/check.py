"""Validates a REFER data root and prints what is there and what is missing.

    python -m evf_sam.data.check /data                       # the paper's datasets (training mix + eval)
    python -m evf_sam.data.check /data --require refcoco|unc refcocog|umd
    python -m evf_sam.data.check /data --decode-images       # decode every image (slow; finds truncated files)

For every dataset|split_by found (and every required one): per split the number of refs,
sentences and images, how many image files are missing on disk or are not images, and how many
annotations have polygons of fewer than 3 points. Exits 1 when a required dataset has a problem:
an annotation file missing, unreadable (truncated / corrupt pickle or JSON) or without refs; a split
the paper uses (`REQUIRED_SPLITS`) missing or without sentences; image files missing or not images.
Exits 0 otherwise.

Degenerate polygons are reported, not failed on: refs whose annotation has no polygon of 3 or more
points are skipped by the reader (`ReferDataset`, with a warning; docs/DESIGN.md says why).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from evf_sam.data.grefer import GREF_DATASETS, GReferDataset, grefs_path
from evf_sam.data.refer import DATASETS, ReferDataset, refer_dir, refs_path

__all__ = ["DEFAULT_REQUIRED", "REQUIRED_SPLITS", "check_root", "image_problem", "main"]

# what the paper's training mix and evaluation read (RefCLEF is opt-in: --require ... refclef|unc)
DEFAULT_REQUIRED: tuple[str, ...] = ("refcoco|unc", "refcoco+|unc", "refcocog|umd")
# the splits of a required dataset that training (train) and the paper's evaluation (the rest) read
REQUIRED_SPLITS: dict[str, tuple[str, ...]] = {
    "refcoco|unc": ("train", "val", "testA", "testB"),
    "refcoco+|unc": ("train", "val", "testA", "testB"),
    "refcocog|umd": ("train", "val", "test"),
    "refclef|unc": ("train",),
}


def image_problem(path: Path, *, decode: bool = False) -> str | None:
    """None for a readable image file; else "missing" or "not an image (...)". Without ``decode``
    only the header is read (what PIL needs to name the format: fast, catches non-images but not
    truncated images); with it the whole image is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return f"not an image ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return None


def check_root(root: str | Path, required: tuple[str, ...] = DEFAULT_REQUIRED, *, check_images: bool = True,
               decode_images: bool = False, out=None) -> list[str]:
    """Prints a report for ``root`` (to ``out``, default stdout); returns the problems with required data
    (empty = all good)."""
    out = sys.stdout if out is None else out
    base = refer_dir(root)
    problems: list[str] = []
    print(f"REFER root: {base}", file=out)
    if not base.is_dir():
        problems.append(f"{base} does not exist (see data/README.md)")
    req = set(required)
    # REFER datasets, then gRefCOCO (grefcoco|unc: grefs(unc).json or .p, optional unless required)
    variants = ([(d, b, refs_path(root, d, b), ReferDataset) for d, bs in DATASETS.items() for b in bs]
                + [(d, b, grefs_path(root, d, b), GReferDataset) for d, bs in GREF_DATASETS.items() for b in bs])
    for dataset, split_by, rp, reader in variants:
        key = f"{dataset}|{split_by}"
        needed = key in req
        inst = rp.parent / "instances.json"
        missing = [str(p) for p in (inst, rp) if not p.is_file()]
        if missing:
            if needed:
                problems.append(f"{key}: missing {', '.join(missing)}")
                print(f"{key:16s} MISSING (required): {', '.join(missing)}", file=out)
            continue
        try:
            with warnings.catch_warnings():  # degenerate polygons: reported below, per split
                warnings.simplefilter("ignore")
                r = reader(root, dataset, split_by)
        except Exception as e:  # unreadable / inconsistent files
            msg = f"{key}: {type(e).__name__}: {e}"
            print(f"{key:16s} ERROR: {e}", file=out)
            if needed:
                problems.append(msg)
            continue
        print(f"{key:16s} {len(r.refs)} refs, {len(r.images)} images in instances.json "
              f"({'required' if needed else 'optional'})", file=out)
        if not r.refs:
            print(f"    no refs in {r.refs_file}", file=out)
            if needed:
                problems.append(f"{key}: {r.refs_file} holds no refs; re-download it")
            continue
        bad_files: dict[int, tuple[Path, str]] = {}
        if check_images:
            for iid in r.image_ids():
                p = r.image_path(iid)
                why = image_problem(p, decode=decode_images)
                if why is not None:
                    bad_files[iid] = (p, why)
        splits = list(dict.fromkeys(str(x["split"]) for x in r.refs))  # file order, skipped refs included
        splits += [s for s in (REQUIRED_SPLITS.get(key, ()) if needed else ()) if s not in splits]
        for split in splits:
            refs = [x for x in r.refs if x["split"] == split]
            ids = {int(x["image_id"]) for x in refs}
            n_sent = sum(len(x["sentences"]) for x in refs)
            n_skip = sum(1 for x in refs if r.empty_ann_ids and int(x["ann_id"]) in r.empty_ann_ids)
            line = f"    {split:8s} refs {len(refs):7d}  sentences {n_sent:7d}  images {len(ids):6d}"
            if n_skip:
                line += f"  refs skipped (polygons of < 3 points) {n_skip}"
            bad = sorted(i for i in ids if i in bad_files)
            n_missing = sum(1 for i in bad if bad_files[i][1] == "missing")
            n_not_image = len(bad) - n_missing
            if check_images:
                line += (f"  missing images {n_missing}" if n_missing else "") + \
                        (f"  not images {n_not_image}" if n_not_image else "") + ("" if bad else "  images ok")
            print(line, file=out)
            if not needed:
                continue
            if split in REQUIRED_SPLITS.get(key, ()) and (not refs or n_sent == 0 or n_skip == len(refs)):
                what = "missing" if not refs else ("has no sentences" if n_sent == 0 else
                                                     "has only refs without a usable polygon")
                problems.append(f"{key}|{split}: split {what} in {r.refs_file}; it is read by "
                                f"{'training' if split == 'train' else 'the paper evaluation'}; re-download "
                                f"the refs file")
            if n_missing:
                example = next(bad_files[i][0] for i in bad if bad_files[i][1] == "missing")
                problems.append(f"{key}|{split}: {n_missing} of {len(ids)} images missing, e.g. {example}")
            if n_not_image:
                example, why = next(bad_files[i] for i in bad if bad_files[i][1] != "missing")
                problems.append(f"{key}|{split}: {n_not_image} of {len(ids)} image files are not images, e.g. "
                                f"{example}: {why}; replace them with the release's files")
        if r.degenerate_parts:
            print(f"    {r.degenerate_parts} polygon part(s) of < 3 points (no area, dropped); "
                  f"{len(r.empty_ann_ids)} annotation(s) without any polygon of 3+ points "
                  f"(their {len(r.skipped_refs)} ref(s) skipped), e.g. ann_ids "
                  f"{sorted(r.empty_ann_ids)[:5]}", file=out)
    for k in sorted(req - {f"{d}|{b}" for d, b, _, _ in variants}):
        problems.append(f"unknown required dataset|split_by {k!r}")
    if problems:
        print("\nPROBLEMS:", file=out)
        for p in problems:
            print(f"  - {p}", file=out)
    else:
        print("\nall required data present", file=out)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evf_sam.data.check", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="directory holding refer_seg/ (or refer_seg itself)")
    ap.add_argument("--require", nargs="*", default=list(DEFAULT_REQUIRED),
                    help=f"dataset|split_by that must be complete (default: {' '.join(DEFAULT_REQUIRED)})")
    ap.add_argument("--no-images", action="store_true", help="skip the image-file checks")
    ap.add_argument("--decode-images", action="store_true",
                    help="decode every image (slow) instead of reading its header: also finds truncated files")
    a = ap.parse_args(argv)
    problems = check_root(a.root, tuple(a.require), check_images=not a.no_images, decode_images=a.decode_images)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""Validates a REFER data root and prints what is there and what is missing.

    python -m evf_sam.data.check /data                       # the paper's datasets (training mix + eval)
    python -m evf_sam.data.check /data --require refcoco|unc refcocog|umd

For every dataset|split_by found (and every required one): per split the number of refs,
sentences and images, and how many image files are missing on disk. Exits 1 when a required
annotation file is missing or unreadable, or a required split's images are missing; 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evf_sam.data.refer import DATASETS, ReferDataset, refer_dir, refs_path

__all__ = ["DEFAULT_REQUIRED", "check_root", "main"]

# what the paper's training mix and evaluation read (RefCLEF is opt-in: --require ... refclef|unc)
DEFAULT_REQUIRED: tuple[str, ...] = ("refcoco|unc", "refcoco+|unc", "refcocog|umd")


def check_root(root: str | Path, required: tuple[str, ...] = DEFAULT_REQUIRED, *, check_images: bool = True,
               out=sys.stdout) -> list[str]:
    """Prints a report for ``root``; returns the problems with required data (empty = all good)."""
    base = refer_dir(root)
    problems: list[str] = []
    print(f"REFER root: {base}", file=out)
    if not base.is_dir():
        problems.append(f"{base} does not exist (see data/README.md)")
    req = set(required)
    for dataset, split_bys in DATASETS.items():
        for split_by in split_bys:
            key = f"{dataset}|{split_by}"
            needed = key in req
            rp = refs_path(root, dataset, split_by)
            inst = rp.parent / "instances.json"
            missing = [str(p) for p in (inst, rp) if not p.is_file()]
            if missing:
                if needed:
                    problems.append(f"{key}: missing {', '.join(missing)}")
                    print(f"{key:16s} MISSING (required): {', '.join(missing)}", file=out)
                continue
            try:
                r = ReferDataset(root, dataset, split_by)
            except Exception as e:  # unreadable / inconsistent files
                msg = f"{key}: {type(e).__name__}: {e}"
                print(f"{key:16s} ERROR: {e}", file=out)
                if needed:
                    problems.append(msg)
                continue
            print(f"{key:16s} {len(r.refs)} refs, {len(r.images)} images in instances.json "
                  f"({'required' if needed else 'optional'})", file=out)
            missing_files: dict[int, Path] = {}
            if check_images:
                for iid in r.image_ids():
                    p = r.image_path(iid)
                    if not p.is_file():
                        missing_files[iid] = p
            for split in r.splits:
                refs = r.split_refs(split)
                ids = {int(x["image_id"]) for x in refs}
                n_sent = sum(len(x["sentences"]) for x in refs)
                n_missing = sum(1 for i in ids if i in missing_files)
                line = f"    {split:8s} refs {len(refs):7d}  sentences {n_sent:7d}  images {len(ids):6d}"
                if check_images:
                    line += f"  missing images {n_missing}" if n_missing else "  images ok"
                print(line, file=out)
                if n_missing and needed:
                    example = missing_files[next(i for i in sorted(ids) if i in missing_files)]
                    problems.append(f"{key}|{split}: {n_missing} of {len(ids)} images missing, e.g. {example}")
    for k in sorted(req - {f"{d}|{b}" for d, bs in DATASETS.items() for b in bs}):
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
    ap.add_argument("--no-images", action="store_true", help="skip the image-file existence check")
    a = ap.parse_args(argv)
    problems = check_root(a.root, tuple(a.require), check_images=not a.no_images)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

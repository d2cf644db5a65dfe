"""Command line: ``evf-sam predict`` / ``python -m evf_sam predict``; ``evf-sam demo`` (web demo, evf_sam/demo.py);
``evf-sam predict-video`` (text-prompted video with EVF-SAM2, evf_sam/video.py).

    python -m evf_sam predict --checkpoint evf-sam --image dog.jpg cat.jpg \\
        --prompt "the dog on the left" --prompt "the red ball" --output out/
    python -m evf_sam predict --checkpoint evf-sam --image photos/ --ext jpg png --prompt "a dog" --output out/
    python -m evf_sam predict --checkpoint evf-sam --manifest jobs.jsonl --output out/ --precision bf16

Every prompt runs on every image (a directory given to ``--image`` stands for every image under it,
recursively, with an ``--ext`` extension; or, with ``--manifest``, each JSON line ``{"image": ...,
"prompt": ...}``; lines are grouped by image so each image is encoded once; relative image paths
are relative to the manifest's directory). All prompts of an image run as one batch on one SAM
image embedding. Per image the output directory gets, for each prompt, a binary mask PNG (0 / 255,
the image's size); one overlay PNG with every mask of the image (`evf_sam.visualize.render_masks`:
a colour, an outline and the prompt as a caption per mask); one ``<key>_masks.json`` with each
mask as COCO RLE (`evf_sam.rle`); and its entries in ``predictions.json``.

Output contract (what a crash or a re-run does to the output directory):
- every file is written atomically in the output directory itself (a temporary name there, then
  ``os.replace``; `evf_sam.atomic`), so the directory may be a mount point, and a reader never sees
  a half-written file; files get the usual permissions (0666 minus the umask);
- ``predictions.json`` is a manifest of every prediction in the directory, old and new: it is read
  at the start, and rewritten (atomically) after each image, so a crash keeps every finished
  image listed;
- a re-run skips (image, prompt) pairs the manifest lists whose mask file exists; ``--overwrite``
  redoes them (same file names). New prompts on a finished image are added to its overlay.

All inputs are checked before the model is loaded (images decodable, prompts with visible text,
checkpoint directory with config.json, weights and tokenizer, device / precision available,
output directory writable, an existing predictions.json readable). Errors print one line
``evf-sam: error: ...`` and exit with status 2 (1 for a failure during prediction, 130 for Ctrl+C),
saying what was written before the failure; ``--debug`` (or ``EVF_SAM_DEBUG=1``) also prints the
traceback.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["CliError", "main"]

from evf_sam.precision import PRECISIONS, dtype_of

PROG = "evf-sam"
RESULTS_FILE = "predictions.json"
MANIFEST_FORMAT = 2
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff")
CHECKPOINT_HELP = ("EVF-SAM checkpoint directory (config.json, weights, sentencepiece.bpe.model) or a Hugging Face "
                   "hub id such as YxZhang/evf-sam2 (downloaded once into the hub cache; a local path wins)")


class CliError(Exception):
    """A user error: printed as one line ``evf-sam: error: <message>``, exit status ``code`` (2)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Job:
    image: Path  # as resolved
    prompts: list[str] = field(default_factory=list)
    key_base: str | None = None  # file-name stem for a new image (None: the image's stem)


# ---------------------------------------------------------------------------------------------
# Arguments


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error too (also: EVF_SAM_DEBUG=1)")
    p = argparse.ArgumentParser(prog=PROG, description="EVF-SAM: text-prompted Segment Anything.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pr = sub.add_parser("predict", help="segment images with text prompts", parents=[common],
                        description="Segment every --prompt on every --image (or the pairs of a --manifest). "
                                    "Re-running into the same --output skips what is done there.")
    pr.add_argument("--checkpoint", required=True, type=Path, metavar="DIR_OR_HUB_ID", help=CHECKPOINT_HELP)
    pr.add_argument("--image", action="extend", nargs="+", type=Path, default=[], metavar="PATH",
                    help="image file(s) or director(ies), searched recursively for --ext files; may be repeated")
    pr.add_argument("--ext", action="extend", nargs="+", default=None, metavar="EXT",
                    help=f"file extensions taken from an --image directory, case-insensitive "
                         f"(default: {' '.join(IMAGE_EXTENSIONS)})")
    pr.add_argument("--prompt", action="extend", nargs="+", default=[], metavar="TEXT",
                    help="text prompt(s), each run on every image; may be repeated")
    pr.add_argument("--manifest", type=Path, metavar="FILE",
                    help='JSON lines {"image": PATH, "prompt": TEXT} instead of --image / --prompt')
    pr.add_argument("--output", required=True, type=Path, metavar="DIR",
                    help="output directory (created if absent; may be a mount point)")
    pr.add_argument("--overwrite", action="store_true",
                    help="redo (image, prompt) pairs that --output's predictions.json already lists "
                         "(default: skip them)")
    pr.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="model precision (fp16 needs CUDA; default fp32)")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto = cuda if available, else cpu")
    pr.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                    help="--multimask: SAM's 3 masks, the best by predicted IoU; --no-multimask: the single mask "
                         "(default: the checkpoint's choice, i.e. the official one: best of 3 for EVF-SAM2, single "
                         "mask otherwise)")
    de = sub.add_parser("demo", help="web demo in the browser (Gradio)", parents=[common],
                        description="Serve a page to upload an image, type prompts (one per line) and see and "
                                    "download the masks. Needs gradio (pip install 'evf-sam[demo]').")
    de.add_argument("--checkpoint", required=True, type=Path, metavar="DIR_OR_HUB_ID", help=CHECKPOINT_HELP)
    de.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the demo "
                         "to the network)")
    de.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = any free port)")
    de.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="model precision (fp16 needs CUDA; default fp32)")
    de.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto = cuda if available, else cpu")
    _add_video_parser(sub)
    return p


def _debug_env() -> bool:
    return os.environ.get("EVF_SAM_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``evf-sam`` / ``python -m evf_sam``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message printed by argparse)
        return int(e.code) if isinstance(e.code, int) else 2
    debug = bool(getattr(args, "debug", False)) or _debug_env()
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "predict-video":
            return _predict_video(args)
        raise CliError(f"unknown command {args.command!r}")
    except CliError as e:
        if debug:  # the exception that caused it (CliErrors are raised `from None` to keep the line short)
            cause = e.__cause__ or e.__context__
            traceback.print_exception(cause if cause is not None else e, file=sys.stderr)
        return _fail(str(e), code=e.code)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", code=130)
    except Exception as e:  # a bug, or a failure no check foresaw: still one line, the traceback on request
        if debug:
            traceback.print_exc(file=sys.stderr)
        return _fail(f"unexpected {type(e).__name__}: {e} (run again with --debug or EVF_SAM_DEBUG=1 for the "
                     f"traceback, and please report it)", code=1)


def _fail(msg: str, code: int = 2) -> int:
    one_line = " ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------------------------
# Validation (everything before the model is loaded)


def _device_and_dtype(device: str, precision: str):
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise CliError("--device cuda requested but CUDA is not available (no GPU or a CPU-only torch); "
                       "use --device cpu")
    dev = ("cuda" if has_cuda else "cpu") if device == "auto" else device
    if precision == "fp16" and dev == "cpu":
        raise CliError("--precision fp16 needs a CUDA device (half precision is not supported on CPU); "
                       "use --precision fp32 or bf16 on CPU")
    return torch.device(dev), dtype_of(precision)


def _resolve_checkpoint(path: Path) -> Path:
    """A local directory as is; a hub id -> its snapshot in the hub cache (downloaded if needed)."""
    from evf_sam.hub import CheckpointNotFoundError, resolve_checkpoint

    try:
        return resolve_checkpoint(path)
    except CheckpointNotFoundError as e:
        raise CliError(str(e)) from None


def _check_checkpoint(path: Path) -> None:
    from evf_sam.models.checkpoint import CONFIG_FILE, WEIGHT_FILES, CheckpointFileError, read_official_config

    hint = "--checkpoint must be an EVF-SAM directory with config.json, weights and sentencepiece.bpe.model"
    if not path.exists():
        raise CliError(f"checkpoint directory {str(path)!r} not found; {hint}")
    if not path.is_dir():
        raise CliError(f"checkpoint {str(path)!r} is not a directory; {hint}")
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CliError(f"{str(cfg)!r} not found; {hint}")
    try:
        read_official_config(path)  # valid JSON, an object, no null where a value is needed
    except CheckpointFileError as e:
        raise CliError(str(e)) from e
    present = [n for n in WEIGHT_FILES if (path / n).is_file()]
    if not present:
        raise CliError(f"no weights in {str(path)!r}: expected one of {', '.join(WEIGHT_FILES)}; "
                       f"re-download the checkpoint or point --checkpoint at the right directory")
    if present[0].endswith(".index.json"):
        try:
            shards = set(json.loads((path / present[0]).read_text()).get("weight_map", {}).values())
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
            raise CliError(f"{str(path / present[0])!r} is not a valid weight index ({e}); re-download it "
                           f"with its shards") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CliError(f"weight shards missing in {str(path)!r}: {', '.join(missing)}; re-download them")
    if not any((path / n).is_file() for n in ("sentencepiece.bpe.model", "tokenizer.json")):
        raise CliError(f"no tokenizer in {str(path)!r}: expected sentencepiece.bpe.model (BEiT-3's XLM-R "
                       f"sentencepiece model, shipped with the official checkpoint); copy it there")


def _clean_prompt(p: object, where: str) -> str:
    from evf_sam.prompts import check_prompt

    try:
        return check_prompt(p, f"prompt {where}")
    except (TypeError, ValueError) as e:
        msg = str(e).replace(" is empty", ": empty prompt", 1) if "is empty" in str(e) else str(e)
        raise CliError(msg) from None


def _extensions(exts: list[str] | None) -> tuple[str, ...]:
    if not exts:
        return IMAGE_EXTENSIONS
    out = []
    for e in exts:
        for part in e.split(","):
            part = part.strip().lstrip(".").lower()
            if part:
                out.append(part)
    if not out:
        raise CliError("--ext needs at least one extension, e.g. --ext jpg png")
    return tuple(dict.fromkeys(out))


def _images_in(directory: Path, exts: tuple[str, ...], exclude: Path | None) -> list[tuple[Path, str]]:
    """(path, key stem) of every image under ``directory`` (recursive, sorted, hidden names and
    ``exclude`` -- the output directory -- left out); the stem is the path relative to ``directory``."""
    found = []
    excl = os.path.abspath(exclude) if exclude is not None else None
    for root, dirs, files in os.walk(directory, followlinks=False):
        if excl is not None and (os.path.abspath(root) == excl or os.path.abspath(root).startswith(excl + os.sep)):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or name.rsplit(".", 1)[-1].lower() not in exts or "." not in name:
                continue
            path = Path(root) / name
            rel = path.relative_to(directory).with_suffix("")
            found.append((path, "_".join(rel.parts)))
    return found


def _jobs_from_args(images: list[Path], prompts: list[str], exts: tuple[str, ...], output: Path) -> list[_Job]:
    if not images or not prompts:
        missing = "--image" if not images else "--prompt"
        raise CliError(f"no {missing} given; pass --image PATH ... and --prompt TEXT ..., or --manifest FILE")
    clean = [_clean_prompt(p, f"#{i + 1} ({p!r}) of --prompt") for i, p in enumerate(prompts)]
    jobs: dict[Path, _Job] = {}
    for img in images:
        if img.is_dir():
            found = _images_in(img, exts, output)
            if not found:
                raise CliError(f"--image directory {str(img)!r} holds no image with extension "
                               f"{', '.join(exts)} (searched recursively); pass --ext for other extensions")
            for path, stem in found:
                job = jobs.setdefault(path, _Job(path, key_base=stem))
                job.prompts.extend(p for p in clean if p not in job.prompts)
        else:
            job = jobs.setdefault(img, _Job(img))
            job.prompts.extend(p for p in clean if p not in job.prompts)
    return list(jobs.values())


def _jobs_from_manifest(manifest: Path) -> list[_Job]:
    if not manifest.is_file():
        raise CliError(f"manifest {str(manifest)!r} not found; --manifest takes a JSON-lines file with "
                       f'{{"image": PATH, "prompt": TEXT}} per line')
    jobs: dict[Path, _Job] = {}
    base = manifest.resolve().parent
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{manifest}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CliError(f"{where}: invalid JSON ({e}); each line must be {{\"image\": PATH, \"prompt\": TEXT}}") \
                from None
        if not isinstance(rec, dict) or "image" not in rec or "prompt" not in rec:
            raise CliError(f'{where}: each line must be an object with "image" and "prompt" keys')
        if not isinstance(rec["image"], str) or not rec["image"].strip():
            raise CliError(f'{where}: "image" must be a non-empty path string')
        prompts = rec["prompt"] if isinstance(rec["prompt"], list) else [rec["prompt"]]
        if not prompts:
            raise CliError(f"empty prompt list at {where}; every line needs a prompt")
        img = Path(rec["image"]).expanduser()
        img = img if img.is_absolute() else base / img
        job = jobs.setdefault(img, _Job(img))
        for p in prompts:
            p = _clean_prompt(p, f"at {where}")
            if p not in job.prompts:
                job.prompts.append(p)
    if not jobs:
        raise CliError(f"manifest {str(manifest)!r} has no entries")
    return list(jobs.values())


def _check_images(jobs: list[_Job]) -> None:
    from evf_sam.preprocess import load_image

    for job in jobs:
        try:
            load_image(job.image)
        except FileNotFoundError:
            raise CliError(f"image {str(job.image)!r} not found; check the path") from None
        except OSError as e:  # a directory, permissions
            raise CliError(f"cannot open image {str(job.image)!r}: {e}") from None
        except ValueError as e:
            raise CliError(f"{e}; replace or remove this image") from None


def _check_output(out: Path) -> None:
    """``out`` is (or can be created as) a writable directory; nothing is created here."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--output {str(out)!r} exists and is not a directory; choose a directory path")
    existing = Path(os.path.abspath(out))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CliError(f"--output {str(out)!r}: {str(existing)!r} is not a directory; choose another --output")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"cannot write into {str(existing)!r}" +
                       ("" if existing == Path(os.path.abspath(out)) else " (to create --output in it)") +
                       "; choose another --output or fix its permissions")


# ---------------------------------------------------------------------------------------------
# The manifest (predictions.json)


@dataclass
class _Manifest:
    """predictions.json of an output directory: every prediction there, by (image, prompt)."""

    out: Path
    records: list[dict] = field(default_factory=list)
    header: dict = field(default_factory=dict)

    @classmethod
    def read(cls, out: Path) -> "_Manifest":
        f = out / RESULTS_FILE
        m = cls(out)
        if not f.exists():
            return m
        try:
            data = json.loads(f.read_text())
            recs = data["predictions"] if isinstance(data, dict) else None
            if not isinstance(recs, list) or not all(isinstance(r, dict) and isinstance(r.get("image"), str)
                                                      and isinstance(r.get("prompt"), str)
                                                      and isinstance(r.get("mask"), str) for r in recs):
                raise ValueError('"predictions" must be a list of {"image", "prompt", "mask", ...} objects')
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as e:
            raise CliError(f"{str(f)!r} exists but is not a readable evf-sam predictions file ({e}); it lists "
                           f"the outputs already in {str(out)!r}: move it (or the directory) away, or choose "
                           f"another --output") from None
        # a record whose mask file is gone no longer describes the directory
        m.records = [r for r in recs if (out / r["mask"]).is_file()]
        m.header = {k: v for k, v in data.items() if k != "predictions"}
        return m

    def done(self, image: str, prompt: str) -> dict | None:
        return next((r for r in self.records if r["image"] == image and r["prompt"] == prompt), None)

    def for_image(self, image: str) -> list[dict]:
        return [r for r in self.records if r["image"] == image]

    def keys(self) -> dict[str, str]:
        """image -> key (the file-name stem of its outputs)."""
        out: dict[str, str] = {}
        for r in self.records:
            out.setdefault(r["image"], r.get("key") or _legacy_key(r["mask"]))
        return out

    def update(self, image: str, new: list[dict]) -> None:
        """Replaces this image's records of the same prompts, appends the others."""
        for rec in new:
            for i, r in enumerate(self.records):
                if r["image"] == image and r["prompt"] == rec["prompt"]:
                    self.records[i] = rec
                    break
            else:
                self.records.append(rec)

    def write(self, run: dict) -> None:
        from evf_sam.atomic import atomic_write_text

        body = {"format": MANIFEST_FORMAT, **run, "predictions": self.records}
        atomic_write_text(self.out / RESULTS_FILE, json.dumps(body, indent=2) + "\n")


def _legacy_key(mask_file: str) -> str:
    m = re.fullmatch(r"(.+)_\d\d_[a-z0-9-]*_mask\.png", mask_file)
    return m.group(1) if m else mask_file.rsplit("_mask.png", 1)[0]


# ---------------------------------------------------------------------------------------------
# Running


def _predict(args: argparse.Namespace) -> int:
    if args.manifest is not None and (args.image or args.prompt):
        raise CliError("use either --manifest or --image/--prompt, not both")
    out: Path = args.output
    jobs = _jobs_from_manifest(args.manifest) if args.manifest is not None else \
        _jobs_from_args(args.image, args.prompt, _extensions(args.ext), out)
    device, dtype = _device_and_dtype(args.device, args.precision)
    _check_output(out)
    manifest = _Manifest.read(out) if out.is_dir() else _Manifest(out)
    todo, skipped = _plan(jobs, manifest, overwrite=args.overwrite)
    _check_images(todo)
    checkpoint = _resolve_checkpoint(args.checkpoint)
    _check_checkpoint(checkpoint)
    n_pairs = sum(len(j.prompts) for j in jobs)
    if not todo:
        print(f"{PROG}: nothing to do: all {n_pairs} (image, prompt) pairs are already in {out} "
              f"(--overwrite redoes them)", file=sys.stderr)
        return 0

    predictor = _load_predictor(checkpoint, dtype, device)
    multimask = predictor.model.config.multimask_output if args.multimask is None else bool(args.multimask)
    run = {"checkpoint": str(args.checkpoint), "device": str(device), "precision": args.precision,
           "multimask_output": bool(multimask)}
    progress = _Progress()
    try:
        out.mkdir(parents=True, exist_ok=True)
        _run(predictor, todo, manifest, run, progress, multimask=multimask)
    except KeyboardInterrupt:
        raise CliError(f"interrupted; {progress.summary(out)}", code=130) from None
    except (OSError, ValueError, RuntimeError) as e:
        where = f" on {str(progress.current)!r}" if progress.current is not None else ""
        raise CliError(f"prediction failed{where}: {e.__class__.__name__}: {e}; {progress.summary(out)}",
                       code=1) from e
    n, k = progress.masks, progress.images
    skip = f"; skipped {skipped} pair{'s' if skipped != 1 else ''} already done (--overwrite redoes them)" \
        if skipped else ""
    print(f"{PROG}: wrote {n} mask{'s' if n != 1 else ''} for {k} image{'s' if k != 1 else ''} to {out}{skip}",
          file=sys.stderr)
    return 0


def _plan(jobs: list[_Job], manifest: _Manifest, *, overwrite: bool) -> tuple[list[_Job], int]:
    """The jobs with only the prompts still to do, and how many (image, prompt) pairs were skipped."""
    todo, skipped = [], 0
    for job in jobs:
        image = _image_id(job.image)
        left = [p for p in job.prompts if overwrite or manifest.done(image, p) is None]
        skipped += len(job.prompts) - len(left)
        if left:
            todo.append(_Job(job.image, left, job.key_base))
    return todo, skipped


def _image_id(path: Path) -> str:
    """How predictions.json names an image: its absolute path (symlinks kept), stable across runs."""
    return os.path.abspath(path)


@dataclass
class _Progress:
    masks: int = 0  # listed in predictions.json
    images: int = 0  # finished: every file written and listed
    files: int = 0  # files written in this run, listed or not
    current: Path | None = None

    def summary(self, out: Path) -> str:
        if self.files == 0:
            return "nothing was written"
        unlisted = "" if self.current is None else (
            "; files of the image that failed may be there without being listed: a re-run redoes that image")
        return (f"{self.files} file{'s' if self.files != 1 else ''} written to {out}, {self.masks} "
                f"mask{'s' if self.masks != 1 else ''} of {self.images} finished image"
                f"{'s' if self.images != 1 else ''} listed in {RESULTS_FILE}{unlisted}; run the same command again "
                f"to continue (finished images are skipped)")


def _png_bytes(array) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _run(predictor, jobs: list[_Job], manifest: _Manifest, run: dict, progress: _Progress, *,
         multimask: bool) -> None:
    import numpy as np
    from tqdm import tqdm

    from evf_sam.atomic import atomic_write_bytes, atomic_write_text
    from evf_sam.preprocess import load_image
    from evf_sam.rle import encode_rle
    from evf_sam.visualize import render_masks

    out = manifest.out
    keys = manifest.keys()
    used = set(keys.values())
    for job in tqdm(jobs, desc=f"{PROG} predict", unit="image", file=sys.stderr, disable=None):
        progress.current = job.image
        image_id = _image_id(job.image)
        key = keys.get(image_id)
        if key is None:
            key = keys[image_id] = _new_key(job.key_base or job.image.stem, used)
        image = load_image(job.image)
        predictor.set_image(image)
        pred = predictor.predict(job.prompts, multimask_output=multimask)
        old = manifest.for_image(image_id)
        n_old = len(old)
        new_recs = []
        for prompt, mask, score in zip(pred.prompts, pred.masks.numpy(), pred.scores.tolist()):
            prev = manifest.done(image_id, prompt)
            if prev is not None:
                mask_file = prev["mask"]
            else:
                taken = {r["mask"] for r in manifest.records} | {r["mask"] for r in new_recs}
                mask_file = f"{key}_{n_old:02d}_{_slug(prompt)}_mask.png"
                while mask_file in taken:
                    n_old += 1
                    mask_file = f"{key}_{n_old:02d}_{_slug(prompt)}_mask.png"
                n_old += 1
            atomic_write_bytes(out / mask_file, _png_bytes(mask.astype(np.uint8) * 255))
            progress.files += 1
            new_recs.append({
                "image": image_id, "key": key, "prompt": prompt, "mask": mask_file,
                "overlay": f"{key}_overlay.png", "rle": f"{key}_masks.json",
                "score": float(score), "area": int(mask.sum()),
                "height": int(mask.shape[0]), "width": int(mask.shape[1]), **run,
            })
        # the image's overlay and RLE file show every mask of the image in the directory, old and new
        merged = _merge(old, new_recs)
        masks = np.stack([_read_mask(out / r["mask"], image.shape[:2]) for r in merged])
        canvas = render_masks(image, masks, [r["prompt"] for r in merged], [r["score"] for r in merged])
        atomic_write_bytes(out / f"{key}_overlay.png", _png_bytes(canvas))
        progress.files += 1
        rle = {"image": image_id, "height": int(image.shape[0]), "width": int(image.shape[1]),
               "annotations": [{"prompt": r["prompt"], "mask": r["mask"], "score": r["score"], "area": r["area"],
                                "segmentation": encode_rle(m)} for r, m in zip(merged, masks)]}
        atomic_write_text(out / f"{key}_masks.json", json.dumps(rle) + "\n")
        progress.files += 1
        for r in merged:  # an older record of this image now shares the new combined overlay / RLE file
            r["overlay"], r["rle"], r["key"] = f"{key}_overlay.png", f"{key}_masks.json", key
        manifest.update(image_id, merged)
        manifest.write(run)
        progress.masks += len(new_recs)
        progress.images += 1
    progress.current = None


def _merge(old: list[dict], new: list[dict]) -> list[dict]:
    """The image's records: the old ones (replaced by a new one of the same prompt), then the rest."""
    by_prompt = {r["prompt"]: r for r in new}
    merged = [dict(by_prompt.pop(r["prompt"], r)) for r in old]
    return merged + [dict(r) for r in new if r["prompt"] in by_prompt]


def _read_mask(path: Path, shape: tuple[int, ...]):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        m = np.asarray(im.convert("L")) > 127
    if m.shape != tuple(shape):
        raise ValueError(f"{str(path)!r} is {m.shape[1]}x{m.shape[0]}, but its image is {shape[1]}x{shape[0]}; "
                         f"the image changed since: re-run with --overwrite")
    return m


def _new_key(base: str, used: set[str]) -> str:
    """A file-name-safe stem for a new image, unused in the directory (``img``, ``img_2``, ...)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "image"
    key, n = base, 1
    while key in used:
        n += 1
        key = f"{base}_{n}"
    used.add(key)
    return key


def _slug(prompt: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-") or "prompt"


def _load_predictor(checkpoint: Path, dtype, device):
    from evf_sam.models.state_dict import CheckpointFileError
    from evf_sam.predictor import EvfSamPredictor

    try:
        return EvfSamPredictor.from_pretrained(checkpoint, dtype=dtype, device=device)
    except CheckpointFileError as e:  # names the file and the fix already
        raise CliError(str(e)) from e
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise CliError(f"cannot load the checkpoint {str(checkpoint)!r}: {e} (is it an EVF-SAM checkpoint "
                       f"directory? re-download it if files are damaged)") from e


# ---------------------------------------------------------------------------------------------
# Web demo


def _free_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host`` now (any free port for 0), else CliError."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CliError(f"--host {host!r} is not a usable address ({e}); use 127.0.0.1 or 0.0.0.0") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind(addr)
        except OSError as e:
            raise CliError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port "
                           f"(--port 0 picks a free one)") from None
        return int(s.getsockname()[1])


def _demo(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port} is out of range; use 1-65535 (or 0 for any free port)")
    device, dtype = _device_and_dtype(args.device, args.precision)
    from evf_sam import demo

    try:
        import gradio  # noqa: F401
    except ImportError:
        raise CliError("the demo needs gradio: pip install 'evf-sam[demo]' (scripts/install.sh installs it)") \
            from None
    port = _free_port(args.host, args.port)
    checkpoint = _resolve_checkpoint(args.checkpoint)
    _check_checkpoint(checkpoint)
    predictor = _load_predictor(checkpoint, dtype, device)
    app = demo.build_demo(predictor, checkpoint=str(args.checkpoint))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"{PROG}: demo of {args.checkpoint} ({device}, {args.precision}) at http://{host}:{port}  "
          f"(Ctrl+C to stop)", file=sys.stderr)
    try:
        demo.serve(app, host=args.host, port=port, block=True, quiet=True)
    except KeyboardInterrupt:  # Ctrl+C: the normal way to stop a server
        print(f"{PROG}: demo stopped", file=sys.stderr)
    except OSError as e:
        raise CliError(f"cannot start the demo server on {args.host}:{port}: {e}") from None
    finally:
        app.close()
        app.evf_session.close()
    return 0


# ---------------------------------------------------------------------------------------------
# Text-prompted video (evf_sam/video.py)


def _add_video_parser(sub) -> None:
    pv = sub.add_parser("predict-video", help="segment a video with text prompts (EVF-SAM2 checkpoints)",
                        description="Text prompt(s) on one frame give the initial masks (EVF-SAM2); SAM-2's video "
                                    "predictor propagates them through the video. Writes masks/<prompt>/<frame>.png, "
                                    "overlay.mp4 and video.json into --output.")
    pv.add_argument("--checkpoint", required=True, type=Path, metavar="DIR_OR_HUB_ID", help=CHECKPOINT_HELP)
    pv.add_argument("--video", required=True, type=Path, metavar="FILE_OR_FRAME_DIR",
                    help="a video file (mp4, ...; needs PyAV) or a directory of frames (00000.jpg, ...)")
    pv.add_argument("--prompt", action="extend", nargs="+", default=[], metavar="TEXT",
                    help="text prompt(s), each tracked as its own object; may be repeated")
    pv.add_argument("--frame", type=int, default=0, metavar="N",
                    help="the frame the prompts describe (default 0, as the official code); tracking runs "
                         "forward from it, then backward")
    pv.add_argument("--output", required=True, type=Path, metavar="DIR", help="output directory")
    pv.add_argument("--fps", type=float, default=None,
                    help="frame rate of overlay.mp4 (default: the video's, 30 for a frame directory)")
    pv.add_argument("--no-overlay", action="store_true", help="write only the masks and video.json")
    pv.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="model precision (fp16 needs CUDA; default fp32)")
    pv.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto = cuda if available, else cpu")


def _predict_video(args: argparse.Namespace) -> int:
    from evf_sam import video

    prompts = [_clean_prompt(p, f"(--prompt #{i + 1}: {p!r})") for i, p in enumerate(args.prompt)]
    if not prompts:
        raise CliError("no --prompt given; pass --prompt TEXT (repeat it to track several objects)")
    if args.fps is not None and not args.fps > 0:
        raise CliError(f"--fps must be positive, got {args.fps}")
    device, dtype = _device_and_dtype(args.device, args.precision)
    try:
        frames, fps = video.load_video(args.video)
    except FileNotFoundError as e:
        raise CliError(str(e)) from None
    except (ValueError, ImportError, OSError) as e:
        raise CliError(f"cannot read --video {str(args.video)!r}: {e}") from None
    if not 0 <= args.frame < len(frames):
        raise CliError(f"--frame {args.frame} is outside the video ({len(frames)} frames: 0..{len(frames) - 1})")
    _check_output(args.output)
    checkpoint = _resolve_checkpoint(args.checkpoint)
    _check_checkpoint(checkpoint)
    predictor = _load_predictor(checkpoint, dtype, device)
    try:
        vp = video.EvfSam2VideoPredictor(predictor.model, tokenizer=predictor.tokenizer)
    except ValueError as e:
        raise CliError(f"{e}; predict-video needs an EVF-SAM2 checkpoint (e.g. YxZhang/evf-sam2)") from None
    try:
        result = vp.predict(frames, prompts, frame_idx=args.frame)
        summary = video.write_video_outputs(
            args.output, frames, result, fps=args.fps or fps, overlay=not args.no_overlay,
            meta={"checkpoint": str(args.checkpoint), "video": str(args.video), "device": str(device),
                  "precision": args.precision})
    except (OSError, ValueError, RuntimeError) as e:
        raise CliError(f"video prediction failed: {e.__class__.__name__}: {e}; nothing was written") from None
    print(f"{PROG}: wrote masks of {len(prompts)} prompt{'s' if len(prompts) != 1 else ''} on {summary['frames']} "
          f"frames to {args.output}" + (f" (+ {summary['overlay']})" if summary["overlay"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

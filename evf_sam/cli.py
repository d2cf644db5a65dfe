"""Command line: ``evf-sam predict`` / ``python -m evf_sam predict``; ``evf-sam demo`` (web demo, evf_sam/demo.py);
``evf-sam predict-video`` (text-prompted video with EVF-SAM2, evf_sam/video.py).

    python -m evf_sam predict --checkpoint evf-sam --image dog.jpg cat.jpg \\
        --prompt "the dog on the left" --prompt "the red ball" --output out/
    python -m evf_sam predict --checkpoint evf-sam --manifest jobs.jsonl --output out/ --precision bf16

Every prompt runs on every image (or, with ``--manifest``, each JSON line ``{"image": ..., "prompt":
...}``; lines are grouped by image so each image is encoded once; relative image paths are relative
to the manifest's directory). For each (image, prompt) the output directory gets a binary mask PNG
(0 / 255, the image's size), an overlay PNG (the mask tinted over the image) and one entry in
``predictions.json`` (image, prompt, mask, overlay, score, area).

All inputs are checked before the model is loaded (images decodable, prompts non-empty, checkpoint
directory with config.json, weights and tokenizer, device / precision available). Results are
written to a temporary directory next to ``--output`` and moved in at the end, so a failed run
leaves nothing behind. Errors print one line ``evf-sam: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["CliError", "main"]

PROG = "evf-sam"
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
RESULTS_FILE = "predictions.json"
CHECKPOINT_HELP = ("EVF-SAM checkpoint directory (config.json, weights, sentencepiece.bpe.model) or a Hugging Face "
                   "hub id such as YxZhang/evf-sam2 (downloaded once into the hub cache; a local path wins)")


class CliError(Exception):
    """A user error: printed as one line ``evf-sam: error: <message>``, exit status 2."""


@dataclass
class _Job:
    image: Path  # as resolved
    prompts: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Arguments


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="EVF-SAM: text-prompted Segment Anything.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    pr = sub.add_parser("predict", help="segment images with text prompts",
                        description="Segment every --prompt on every --image (or the pairs of a --manifest).")
    pr.add_argument("--checkpoint", required=True, type=Path, metavar="DIR_OR_HUB_ID", help=CHECKPOINT_HELP)
    pr.add_argument("--image", action="extend", nargs="+", type=Path, default=[], metavar="PATH",
                    help="image file(s); may be repeated")
    pr.add_argument("--prompt", action="extend", nargs="+", default=[], metavar="TEXT",
                    help="text prompt(s), each run on every image; may be repeated")
    pr.add_argument("--manifest", type=Path, metavar="FILE",
                    help='JSON lines {"image": PATH, "prompt": TEXT} instead of --image / --prompt')
    pr.add_argument("--output", required=True, type=Path, metavar="DIR", help="output directory")
    pr.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                    help="model precision (fp16 needs CUDA; default fp32)")
    pr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto = cuda if available, else cpu")
    pr.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None,
                    help="--multimask: SAM's 3 masks, the best by predicted IoU; --no-multimask: the single mask "
                         "(default: the checkpoint's choice, i.e. the official one: best of 3 for EVF-SAM2, single "
                         "mask otherwise)")
    de = sub.add_parser("demo", help="web demo in the browser (Gradio)",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``evf-sam`` / ``python -m evf_sam``; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message printed by argparse)
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "predict-video":
            return _predict_video(args)
        raise CliError(f"unknown command {args.command!r}")
    except CliError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was written", code=130)


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
    return torch.device(dev), getattr(torch, PRECISIONS[precision])


def _resolve_checkpoint(path: Path) -> Path:
    """A local directory as is; a hub id -> its snapshot in the hub cache (downloaded if needed)."""
    from evf_sam.hub import CheckpointNotFoundError, resolve_checkpoint

    try:
        return resolve_checkpoint(path)
    except CheckpointNotFoundError as e:
        raise CliError(str(e)) from None


def _check_checkpoint(path: Path) -> None:
    from evf_sam.models.checkpoint import CONFIG_FILE, WEIGHT_FILES

    hint = "--checkpoint must be an EVF-SAM directory with config.json, weights and sentencepiece.bpe.model"
    if not path.exists():
        raise CliError(f"checkpoint directory {str(path)!r} not found; {hint}")
    if not path.is_dir():
        raise CliError(f"checkpoint {str(path)!r} is not a directory; {hint}")
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CliError(f"{str(cfg)!r} not found; {hint}")
    try:
        json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CliError(f"{str(cfg)!r} is not valid JSON ({e}); re-download the checkpoint") from None
    present = [n for n in WEIGHT_FILES if (path / n).is_file()]
    if not present:
        raise CliError(f"no weights in {str(path)!r}: expected one of {', '.join(WEIGHT_FILES)}; "
                       f"re-download the checkpoint or point --checkpoint at the right directory")
    if present[0].endswith(".index.json"):
        try:
            shards = set(json.loads((path / present[0]).read_text()).get("weight_map", {}).values())
        except (json.JSONDecodeError, AttributeError) as e:
            raise CliError(f"{str(path / present[0])!r} is not a valid weight index ({e})") from None
        missing = sorted(s for s in shards if not (path / s).is_file())
        if missing:
            raise CliError(f"weight shards missing in {str(path)!r}: {', '.join(missing)}; re-download them")
    if not any((path / n).is_file() for n in ("sentencepiece.bpe.model", "tokenizer.json")):
        raise CliError(f"no tokenizer in {str(path)!r}: expected sentencepiece.bpe.model (BEiT-3's XLM-R "
                       f"sentencepiece model, shipped with the official checkpoint); copy it there")


def _clean_prompt(p: object, where: str) -> str:
    if not isinstance(p, str) or not p.strip():
        raise CliError(f"empty prompt {where}; every prompt needs text")
    return p.strip()


def _jobs_from_args(images: list[Path], prompts: list[str]) -> list[_Job]:
    if not images or not prompts:
        missing = "--image" if not images else "--prompt"
        raise CliError(f"no {missing} given; pass --image PATH ... and --prompt TEXT ..., or --manifest FILE")
    clean = [_clean_prompt(p, f"(--prompt #{i + 1}: {p!r})") for i, p in enumerate(prompts)]
    jobs: dict[Path, _Job] = {}
    for img in images:
        jobs.setdefault(img, _Job(img)).prompts.extend(clean)
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
        jobs.setdefault(img, _Job(img)).prompts.extend(_clean_prompt(p, f"at {where}") for p in prompts)
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
    if out.exists() and not out.is_dir():
        raise CliError(f"--output {str(out)!r} exists and is not a directory; choose a directory path")
    parent = out.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CliError(f"cannot create the parent of --output {str(out)!r}: {e}") from None
    if not os.access(parent, os.W_OK):
        raise CliError(f"cannot write into {str(parent)!r} (the parent of --output); choose another --output")


# ---------------------------------------------------------------------------------------------
# Running


def _predict(args: argparse.Namespace) -> int:
    if args.manifest is not None and (args.image or args.prompt):
        raise CliError("use either --manifest or --image/--prompt, not both")
    jobs = _jobs_from_manifest(args.manifest) if args.manifest is not None else \
        _jobs_from_args(args.image, args.prompt)
    device, dtype = _device_and_dtype(args.device, args.precision)
    _check_images(jobs)
    _check_output(args.output)
    checkpoint = _resolve_checkpoint(args.checkpoint)
    _check_checkpoint(checkpoint)

    predictor = _load_predictor(checkpoint, dtype, device)
    out = args.output
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.resolve().name}.tmp-", dir=out.resolve().parent))
    try:
        multimask = predictor.model.config.multimask_output if args.multimask is None else bool(args.multimask)
        records = _run(predictor, jobs, tmp, multimask=multimask)
        summary = {
            "checkpoint": str(args.checkpoint),
            "device": str(device),
            "precision": args.precision,
            "multimask_output": bool(multimask),
            "predictions": records,
        }
        (tmp / RESULTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        _commit(tmp, out)
    except CliError:
        raise
    except (OSError, ValueError, RuntimeError) as e:
        raise CliError(f"prediction failed: {e.__class__.__name__}: {e}; nothing was written") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = len(records)
    print(f"{PROG}: wrote {n} mask{'s' if n != 1 else ''} for {len(jobs)} image{'s' if len(jobs) != 1 else ''} "
          f"to {out}", file=sys.stderr)
    return 0


def _load_predictor(checkpoint: Path, dtype, device):
    from evf_sam.predictor import EvfSamPredictor

    try:
        return EvfSamPredictor.from_pretrained(checkpoint, dtype=dtype, device=device)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise CliError(f"cannot load the checkpoint {str(checkpoint)!r}: {e} (is it an EVF-SAM checkpoint "
                       f"directory? re-download it if files are damaged)") from None


def _run(predictor, jobs: list[_Job], tmp: Path, *, multimask: bool) -> list[dict]:
    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from evf_sam.preprocess import load_image, overlay_mask

    keys = _image_keys([j.image for j in jobs])
    records = []
    for job, key in tqdm(list(zip(jobs, keys)), desc=f"{PROG} predict", unit="image", file=sys.stderr,
                         disable=None):
        image = load_image(job.image)
        predictor.set_image(image)
        pred = predictor.predict(job.prompts, multimask_output=multimask)
        for j, (prompt, mask, score) in enumerate(zip(pred.prompts, pred.masks.numpy(), pred.scores.tolist())):
            stem = f"{key}_{j:02d}_{_slug(prompt)}"
            mask_file, overlay_file = f"{stem}_mask.png", f"{stem}_overlay.png"
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(tmp / mask_file)
            Image.fromarray(overlay_mask(image, mask)).save(tmp / overlay_file)
            records.append({
                "image": str(job.image), "prompt": prompt, "mask": mask_file, "overlay": overlay_file,
                "score": float(score), "area": int(mask.sum()),
                "height": int(mask.shape[0]), "width": int(mask.shape[1]),
            })
    return records


def _image_keys(images: list[Path]) -> list[str]:
    """File-name-safe, unique stem per image (``img``, ``img_2`` for a second ``.../img.jpg``)."""
    seen: dict[str, int] = {}
    keys = []
    for img in images:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", img.stem).strip("-.") or "image"
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return keys


def _slug(prompt: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-") or "prompt"


def _commit(tmp: Path, out: Path) -> None:
    """Moves the finished results into ``out``: a rename when ``out`` is absent or empty, else file
    by file (replacing files of the same name, e.g. a previous predictions.json)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    for f in sorted(tmp.iterdir()):
        os.replace(f, out / f.name)


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

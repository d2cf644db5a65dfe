#!/usr/bin/env python
"""Quickstart: the whole EVF-SAM loop on a laptop CPU in a few minutes.

    python scripts/quickstart.py                       # README command 1 (after scripts/install.sh)
    python scripts/quickstart.py --steps 300 --out runs/qs-short trainer.micro_batch_size=4

1. builds the synthetic referring dataset (exact REFER layout) under ``--data`` if it is absent;
2. trains a tiny EVF-SAM from scratch with DeepSpeed (``scripts/train.py +experiment=quickstart``;
   gloo on CPU, NCCL on GPU; ``--nproc 2`` runs it under torchrun);
3. evaluates the exported model with the evaluation code on the synthetic val splits, next to the
   untrained model and the two text-blind answers (empty mask; union of every object in the image);
4. runs the predictor on a synthetic val image and writes mask overlays;
5. prints where everything is and writes ``summary.json``.

Extra ``key=value`` arguments are passed to the training command as Hydra overrides.

``--grefcoco``: the same loop with the synthetic gRefCOCO look-alike (expressions naming several
objects or none) in the training mix (``data.sources.grefcoco.rate``, `GREF_OVERRIDES`), validated and
evaluated on ``grefcoco|unc|val`` with cIoU, gIoU, N-acc and T-acc next to the same baselines
(tests/test_learning.py::test_quickstart_grefcoco_learns).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evf_sam.atomic import atomic_write_text  # noqa: E402

EVAL_SPLITS = ("refcoco|unc|val", "refcocog|umd|val")
GREF_EVAL_SPLITS = ("grefcoco|unc|val",)
# half of the samples from gRefCOCO (the three REFER look-alikes share the other half), validated on it
GREF_OVERRIDES = ("data.synthetic.grefcoco=true", "data.sources.grefcoco.rate=3.0", "data.val.dataset=grefcoco",
                  "data.val.split_by=unc")


def _train(args: argparse.Namespace, run_dir: Path) -> None:
    overrides = ["+experiment=quickstart", f"run_dir={run_dir}", f"data.root={args.data}"]
    if args.steps is not None:
        overrides.append(f"trainer.total_steps={args.steps}")
    if args.grefcoco:
        overrides += GREF_OVERRIDES
    overrides += args.overrides
    if args.nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               str(REPO / "scripts" / "train.py"), *overrides]
    else:
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *overrides]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def _evaluate(run_dir: Path, data_root: Path, max_images: int | None, splits: tuple[str, ...] = EVAL_SPLITS) -> dict:
    import torch

    from evf_sam import EvfSam
    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.data.refer import parse_split_name
    from evf_sam.engine.baselines import trivial_baselines
    from evf_sam.engine.evaluate import evaluate
    from evf_sam.models.evf_sam import build_evf_sam
    from evf_sam.tokenizer import load_tokenizer

    trained = EvfSam.from_pretrained(run_dir / "final")
    tokenizer = load_tokenizer(run_dir / "final")
    torch.manual_seed(0)
    untrained = build_evf_sam(trained.config).eval()  # same architecture, fresh random weights
    # the frozen SAM image encoder is part of the tiny model's random init: give the untrained model
    # the trained one's, so the comparison isolates what training changed
    untrained.sam.image_encoder.load_state_dict(trained.sam.image_encoder.state_dict())
    out = {}
    for name in splits:
        dataset, split_by, split = parse_split_name(name)
        ds = build_eval_dataset(data_root, dataset, split_by, split, sam_size=trained.sam_image_size,
                                beit_size=trained.beit_image_size, max_images=max_images,
                                resize_mode=trained.resize_mode)
        res = {"trained": evaluate(trained, tokenizer, ds, progress=False),
               "untrained": evaluate(untrained, tokenizer, ds, progress=False)}
        res.update(trivial_baselines(data_root, dataset, split_by, split, max_images=max_images))
        out[name] = res
    return out


def _table(results: dict) -> str:
    rows = ("trained", "untrained", "union", "empty")
    labels = {"trained": "EVF-SAM tiny (trained)", "untrained": "untrained (random init)",
              "union": "baseline: union of all objects", "empty": "baseline: empty mask"}
    head = "| | " + " | ".join(f"{s} cIoU | {s} gIoU" for s in results) + " |"
    sep = "|---|" + "---|---|" * len(results)
    lines = [head, sep]
    for r in rows:
        cells = [f"{results[s][r]['ciou']:.3f} | {results[s][r]['giou']:.3f}" for s in results]
        lines.append(f"| {labels[r]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gref_table(results: dict) -> str:
    """cIoU, gIoU, N-acc, T-acc per gRefCOCO split (the empty mask is perfect on N-acc and 0 on T-acc)."""
    rows = ("trained", "untrained", "union", "empty")
    labels = {"trained": "EVF-SAM tiny (trained)", "untrained": "untrained (random init)",
              "union": "baseline: union of all objects", "empty": "baseline: empty mask"}
    keys = ("ciou", "giou", "n_acc", "t_acc")
    head = "| | " + " | ".join(f"{s} {k}" for s in results for k in ("cIoU", "gIoU", "N-acc", "T-acc")) + " |"
    lines = [head, "|---|" + "---|" * (len(keys) * len(results))]
    for r in rows:
        cells = ["-" if results[s][r][k] is None else f"{results[s][r][k]:.3f}" for s in results for k in keys]
        lines.append(f"| {labels[r]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _demo(run_dir: Path, data_root: Path, out_dir: Path) -> list[dict]:
    import numpy as np
    from PIL import Image

    from evf_sam.data.refer import ReferDataset
    from evf_sam.predictor import EvfSamPredictor
    from evf_sam.preprocess import load_image, overlay_mask

    refer = ReferDataset(data_root, "refcoco", "unc")
    refs = refer.split_refs("val")
    image_id = int(refs[0]["image_id"])
    prompts = [r["sentences"][0]["sent"] for r in refs if int(r["image_id"]) == image_id]
    image = load_image(refer.image_path(image_id))
    predictor = EvfSamPredictor.from_pretrained(run_dir / "final")
    predictor.set_image(image)
    pred = predictor.predict(prompts)
    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(out_dir / "image.png")
    written = []
    for j, prompt in enumerate(prompts):
        slug = "_".join(prompt.split())[:40]
        f = out_dir / f"{j:02d}_{slug}_overlay.png"
        Image.fromarray(np.asarray(overlay_mask(image, pred.masks[j].numpy()))).save(f)
        written.append({"prompt": prompt, "overlay": str(f), "score": float(pred.scores[j]),
                        "area": int(pred.masks[j].sum())})
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "runs" / "quickstart", help="run directory")
    p.add_argument("--data", type=Path, default=REPO / "data" / "synthetic", help="synthetic data root")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the experiment's)")
    p.add_argument("--nproc", type=int, default=1, help="processes (torchrun) for training")
    p.add_argument("--max-eval-images", type=int, default=None)
    p.add_argument("--grefcoco", action="store_true",
                   help="train with the synthetic gRefCOCO look-alike, evaluate on grefcoco|unc|val (+ N-acc / T-acc)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for scripts/train.py (key=value)")
    args = p.parse_args(argv)
    args.out, args.data = args.out.resolve(), args.data.resolve()

    t0 = time.time()
    _train(args, args.out)
    t_train = time.time() - t0
    print("\nevaluating ...", flush=True)
    results = _evaluate(args.out, args.data, args.max_eval_images,
                        GREF_EVAL_SPLITS if args.grefcoco else EVAL_SPLITS)
    demo = _demo(args.out, args.data, args.out / "demo")
    summary = {"run_dir": str(args.out), "data_root": str(args.data), "train_seconds": round(t_train, 1),
               "results": results, "demo": demo}
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2))

    print("\n" + (_gref_table(results) if args.grefcoco else _table(results)))
    print(f"\ntrained in {t_train:.0f} s")
    print(f"data:        {args.data / 'refer_seg'}")
    print(f"run dir:     {args.out}  (config.yaml, config_resolved.yaml, train.log, metrics.jsonl, results.json)")
    print(f"checkpoint:  {args.out / 'final'}  (EvfSam.from_pretrained / scripts/eval_refcoco.py checkpoint=...)")
    print(f"demo:        {args.out / 'demo'}")
    for d in demo:
        print(f"  {d['prompt']!r}: score {d['score']:.2f}, {d['area']} px -> {Path(d['overlay']).name}")
    print(f"summary:     {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

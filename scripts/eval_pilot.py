#!/usr/bin/env python
"""Evaluates a pilot run (tiny EVF-SAM on synthetic data) on the eight splits, per expression type, beside
the text-blind baselines (and, for a run with semantic validation data such as the Tab. 6 pilot, on its
ADE20K val split); writes a results.json that scripts/make_table.py reads.

    python scripts/eval_pilot.py runs/pilot_table3/early_s0            # -> runs/pilot_table3/early_s0/pilot_eval/
    python scripts/make_table.py runs/pilot_table3/*/pilot_eval         # Tab. 3 pilot: mean ± std over seeds
    python scripts/make_table.py --by-type runs/pilot_table3/*/pilot_eval

Reads ``RUN_DIR/final`` (the exported model and tokenizer) and the run's data root from
``RUN_DIR/config_resolved.yaml`` (or ``--data``). For every split: the evaluation code of training
(`evf_sam.engine.evaluate.evaluate`, predictions saved as PNGs in a temporary directory), then
`evf_sam.type_scores` on those predictions. Writes ``OUT/results.json``::

    {"<split>": {ciou, giou, pr@K, n_expressions, n_images}, ...,     # the model, eight splits
     "ade20k|semantic|val": {ciou, ..., miou},                        # runs with data.val_semantic (Tab. 6)
     "baselines": {"union": {"<split>": {...}}, "empty": {...}},      # text-blind answers, same splits
     "by_type": {"model" | "union" | "empty": {"<type>": {...}}},     # pooled over the eight splits
     "axes": {...}, "config": <the training config>, "checkpoint": "RUN_DIR/final"}

The semantic split is the run's ``data.val_semantic`` (dataset, split, prefix, ignore_unlabeled: the Tab. 6
pilot's is the official protocol, "[semantic] <class>" for every class present, "other" pixels
background) under its semantic root (``--data`` replaces it too), cIoU + mIoU; its text-blind baseline
``union`` is the whole image for every expression (every labelled class at once), ``empty`` nothing.
``--no-semantic`` skips it.

Per-type figures pool the eight splits (sum I / sum U over every sentence of that type; RefCOCO,
RefCOCO+ and RefCOCOg share images, so an image can count more than once).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.atomic import atomic_write_text  # noqa: E402
from evf_sam.paper_numbers import REFER_SPLITS  # noqa: E402


def semantic_baselines(dataset) -> dict[str, dict]:
    """Text-blind answers on a `SemanticEvalDataset`: ``union`` (every pixel of the image, i.e. all classes
    at once) and ``empty``, scored as `evaluate` scores the model (ignored pixels left out when the
    dataset ignores them)."""
    import torch

    from evf_sam.metrics import RefMetrics

    out = {"union": RefMetrics(), "empty": RefMetrics()}
    for k in range(len(dataset)):
        item = dataset[k]
        gt = item.gt_masks  # (N, H, W) bool
        keep = torch.ones_like(gt[0]) if item.ignore_mask is None else ~item.ignore_mask
        gt = gt & keep
        out["union"].update(keep.expand_as(gt), gt)
        out["empty"].update(torch.zeros_like(gt), gt)
        for m in out.values():
            m.add_images(1)
    return {answer: m.compute() for answer, m in out.items()}


def _semantic_dataset(cfg: dict | None, data_root: Path | None, model, max_images: int | None):
    """The run's ``data.val_semantic`` split as a `SemanticEvalDataset`, or None without one."""
    import dataclasses

    from evf_sam.config import ReferDataConfig, typed
    from evf_sam.data.build import val_semantic_dataset

    data_cfg = (cfg or {}).get("data") or {}
    if not data_cfg.get("val_semantic"):
        return None
    data = typed(data_cfg, ReferDataConfig)  # the training run's data config, as its validation read it
    if data_root is not None:  # --data replaces the semantic root too
        data = dataclasses.replace(data, val_semantic=dataclasses.replace(data.val_semantic, root=str(data_root)))
    # Official protocol: every model is asked "[semantic] <class>"; one whose tokenizer lacks the token (a RES-only
    # row) reads it as ordinary pieces (zero-shot), as official utils/dataset.py does.
    return val_semantic_dataset(data, model, max_images=max_images)


def evaluate_run(run_dir: Path, data_root: Path | None = None, splits: tuple[str, ...] = REFER_SPLITS,
                 max_images: int | None = None, semantic: bool = True) -> dict:
    import torch
    import yaml

    from evf_sam import EvfSam
    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.data.refer import parse_split_name
    from evf_sam.engine.evaluate import evaluate
    from evf_sam.models.encoders import load_encoder_tokenizer
    from evf_sam.run_axes import axes_from_config
    from evf_sam.type_scores import merge_scores, type_scores

    final = run_dir / "final"
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"{str(final)!r} has no exported model (config.json): is the training run finished?")
    cfg_file = run_dir / "config_resolved.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) if cfg_file.is_file() else None
    explicit_root = data_root is not None
    if data_root is None:
        if cfg is None or not (cfg.get("data") or {}).get("root"):
            raise ValueError(f"no data root: {str(cfg_file)!r} is missing or has no data.root; pass --data")
        data_root = Path(cfg["data"]["root"])
    torch.manual_seed(0)
    model = EvfSam.from_pretrained(final).eval()
    tokenizer = load_encoder_tokenizer(str(model.config.encoder), final)
    results: dict = {}
    baselines: dict = {"union": {}, "empty": {}}
    parts = []
    with tempfile.TemporaryDirectory(prefix="eval_pilot_") as tmp:
        for name in splits:
            dataset, split_by, split = parse_split_name(name)
            ds = build_eval_dataset(data_root, dataset, split_by, split, sam_size=model.sam_image_size,
                                    beit_size=model.beit_image_size, max_images=max_images,
                                    resize_mode=model.resize_mode)
            masks = Path(tmp) / name.replace("|", "_")
            results[name] = evaluate(model, tokenizer, ds, save_masks_dir=masks, progress=False)
            scores = type_scores(data_root, dataset, split_by, split, masks_dir=masks, max_images=max_images)
            all_model = scores["model"]["all"].compute()
            if all_model["n_expressions"] != results[name]["n_expressions"] or \
                    abs(all_model["ciou"] - results[name]["ciou"]) > 1e-9:  # same sentences, same masks
                raise RuntimeError(f"{name}: per-type scoring disagrees with the evaluation "
                                   f"({all_model} vs {results[name]})")
            for answer in ("union", "empty"):
                baselines[answer][name] = scores[answer]["all"].compute()
            parts.append(scores)
            print(f"{name}: cIoU {results[name]['ciou']:.4f} (union {baselines['union'][name]['ciou']:.4f})",
                  flush=True)
    sem = _semantic_dataset(cfg, data_root if explicit_root else None, model, max_images) \
        if semantic else None
    if sem is not None:  # e.g. ade20k|semantic|val (Tab. 6): not part of the per-type pooling
        results[sem.name] = evaluate(model, tokenizer, sem, progress=False)
        for answer, m in semantic_baselines(sem).items():
            baselines[answer][sem.name] = m
        print(f"{sem.name}: cIoU {results[sem.name]['ciou']:.4f} (union {baselines['union'][sem.name]['ciou']:.4f})",
              flush=True)
    pooled = merge_scores(parts)
    results["baselines"] = baselines
    results["by_type"] = {answer: {t: m.compute() for t, m in by_type.items()} for answer, by_type in pooled.items()}
    results["axes"] = axes_from_config(cfg) if cfg is not None else None
    results["config"] = cfg
    results["checkpoint"] = str(final)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished training run (with final/)")
    p.add_argument("--data", type=Path, default=None, help="data root (default: the run's data.root)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: RUN_DIR/pilot_eval)")
    p.add_argument("--max-images", type=int, default=None, help="first N images of each split")
    p.add_argument("--no-semantic", action="store_true", help="skip the run's semantic val split (data.val_semantic)")
    args = p.parse_args(argv)
    results = evaluate_run(args.run_dir, args.data, max_images=args.max_images, semantic=not args.no_semantic)
    out = args.out or args.run_dir / "pilot_eval"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    by_type = results["by_type"]
    print("type: model / union cIoU")
    for t, m in by_type["model"].items():
        print(f"  {t:16s} {m['ciou']:.4f} / {by_type['union'][t]['ciou']:.4f}  ({m['n_expressions']} expressions)")
    print(f"wrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

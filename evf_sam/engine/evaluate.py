"""Evaluation loop shared by scripts/eval_refcoco.py and training-time validation.

    metrics = evaluate(model, tokenizer, build_eval_dataset(root, "refcoco", "unc", "val", ...),
                       device="cuda", dtype=torch.bfloat16)
    # {"ciou", "giou", "pr@0.5", ..., "pr@0.9", "n_expressions", "n_images"}

Per image: one ``encode_image``; all its expressions go through ``encode_prompts`` and
``decode_masks`` as one batch; mask = postprocessed logits (original size) > 0, as the official
evaluation. Under torch.distributed rank r evaluates images r, r + W, ... and the integer metric
sums are all-reduced, so the numbers are identical for every world size (with batch_size=1).

Semantic-segmentation splits (`evf_sam.data.eval_dataset.SemanticEvalDataset`, paper Tab. 6) give items
with a class id per expression (and optionally an ignore mask, left out of I and U): the result then
also has ``miou`` (per-class ΣI/ΣU, mean over the classes that occur) and ``n_classes``.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evf_sam.atomic import atomic_write_text
from evf_sam.data.batch import text_length
from evf_sam.metrics import ClassIoU, RefMetrics
from evf_sam.models.encoders import tokenize_for_encoder

__all__ = ["METRIC_KEYS", "evaluate", "format_paper_table", "run_eval_from_config", "write_results"]

METRIC_KEYS = ("ciou", "giou", "pr@0.5", "pr@0.6", "pr@0.7", "pr@0.8", "pr@0.9", "n_expressions", "n_images",
               "miou")  # miou: semantic splits only (empty in results.csv for REFER splits)
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DATASET_TITLES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg", "refclef": "RefCLEF",
                   "ade20k": "ADE20K", "mapillary": "Mapillary"}

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model, tokenizer, dataset, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
             max_images: int | None = None, save_masks_dir: str | Path | None = None, progress: bool = True,
             batch_size: int = 1, num_workers: int = 0, max_text_len: int | None = None,
             rank: int | None = None, world_size: int | None = None) -> dict[str, Any]:
    """cIoU / gIoU / Pr@K of ``model`` on ``dataset`` (a `ReferEvalDataset`, unsharded).

    device / dtype: where the inputs go and the compute dtype. The model should already be on ``device``;
    inputs are cast to the model's dtype (weights in bf16 / fp16 as the official eval), and a model in
    fp32 with a lower ``dtype`` on CUDA runs under autocast. max_images: first N images of the split.
    save_masks_dir: writes ``<image_id:012d>_<ref_id>_<sent_id>.png`` (0 / 255) per expression.
    batch_size: images per forward (1 keeps results bit-identical across world sizes).
    rank / world_size: default from torch.distributed (0 / 1 when not initialised).
    Returns the metrics on every rank (already reduced over ranks).
    """
    import torch.distributed as dist

    dist_on = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if dist_on else 0
    if world_size is None:
        world_size = dist.get_world_size() if dist_on else 1
    device = torch.device(device)
    full = dataset.subset(max_images) if max_images is not None else dataset
    shard = full.shard(rank, world_size)
    max_len = text_length(max_text_len, model.max_text_len)
    save_dir = Path(save_masks_dir) if save_masks_dir else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    model_dtype = getattr(model, "dtype", dtype)
    # weights already in ``dtype`` (the official eval): inputs follow; fp32 weights + a low-precision
    # ``dtype`` on CUDA (training-time validation): autocast
    use_autocast = dtype != model_dtype and device.type == "cuda"
    amp = torch.autocast(device_type=device.type, dtype=dtype) if use_autocast else nullcontext()
    in_dtype = model_dtype

    was_training = model.training
    model.eval()
    metrics = RefMetrics()
    class_iou = None
    if getattr(dataset, "num_classes", None):  # semantic-segmentation split: + mIoU over its classes
        class_iou = ClassIoU(dataset.num_classes)
    loader = torch.utils.data.DataLoader(shard, batch_size=max(1, int(batch_size)), shuffle=False,
                                         num_workers=int(num_workers), collate_fn=list)
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        name = getattr(dataset, "name", "eval")
        bar = tqdm(total=len(shard), desc=name if world_size == 1 else f"{name} (rank 0 of {world_size})",
                   unit="img", dynamic_ncols=True)
    try:
        for items in loader:
            sam = torch.stack([it.sam_image for it in items]).to(device, in_dtype)  # (B, 3, S, S)
            beit = torch.stack([it.beit_image for it in items]).to(device, in_dtype)  # (B, 3, b, b)
            sentences = [s for it in items for s in it.sentences]
            image_index = torch.tensor([b for b, it in enumerate(items) for _ in it.sentences], device=device)
            ids, pad = tokenize_for_encoder(str(model.config.encoder), tokenizer, sentences, max_len)
            with amp:
                emb = model.encode_image(sam)  # (B, C, h, w)
                prompts = model.encode_prompts(beit.index_select(0, image_index), ids.to(device), pad.to(device))
                low_res, _ = model.decode_masks(emb, prompts, image_index)  # (N, 1, 4h, 4w)
            start = 0
            for it in items:
                n = len(it.sentences)
                logits = model.postprocess_masks(low_res[start:start + n].float(), it.input_size, it.original_size)
                pred = logits[:, 0] > 0  # (n, H, W)
                ignore = getattr(it, "ignore_mask", None)
                if ignore is not None:  # (H, W) unlabeled pixels of semantic data: in neither I nor U
                    pred = pred & ~ignore.to(device)
                inter, union = metrics.update(pred, it.gt_masks.to(device))
                if class_iou is not None:
                    class_iou.update(it.class_ids, inter, union)
                metrics.add_images(1)
                if save_dir is not None:
                    _save_masks(save_dir, it, pred)
                start += n
            if bar is not None:
                bar.update(len(items))
    finally:
        if bar is not None:
            bar.close()
        if was_training:
            model.train()
    if world_size > 1 and dist_on:
        metrics.all_reduce(device if dist.get_backend() == "nccl" else "cpu")
        if class_iou is not None:
            class_iou.all_reduce(device if dist.get_backend() == "nccl" else "cpu")
    out = metrics.compute()
    if class_iou is not None:
        out.update(class_iou.compute())
    return out


def _save_masks(save_dir: Path, item, pred: torch.Tensor) -> None:
    from PIL import Image

    arr = pred.cpu().numpy().astype(np.uint8) * 255
    for k, (ref_id, sent_id) in enumerate(zip(item.ref_ids, item.sent_ids)):
        Image.fromarray(arr[k]).save(save_dir / f"{item.image_id:012d}_{ref_id}_{sent_id}.png")


# -- tables and result files ------------------------------------------------------------------------

def format_paper_table(results: dict[str, dict[str, Any]], metric: str = "ciou", row_name: str = "EVF-SAM") -> str:
    """Markdown table in the paper's Table 2 layout (values in percent, "-" for splits not run).

    Columns: RefCOCO val/testA/testB | RefCOCO+ val/testA/testB | RefCOCOg val/test | AVG, where AVG
    is the mean over the paper splits that were run (marked "(k/8)" when not all 8 were).
    Splits outside the 8 (e.g. RefCLEF) are appended as extra columns.
    """
    from evf_sam.data.refer import PAPER_SPLITS

    extra = [s for s in results if s not in PAPER_SPLITS]
    cols = list(PAPER_SPLITS) + extra

    def title(split: str) -> str:
        d, _, sp = split.split("|")
        return f"{_DATASET_TITLES.get(d, d)} {sp}"

    vals = []
    for c in cols:
        v = results.get(c, {}).get(metric)
        vals.append("-" if v is None else f"{100 * float(v):.1f}")
    ran = [float(results[c][metric]) for c in PAPER_SPLITS if c in results and metric in results[c]]
    avg = "-" if not ran else f"{100 * sum(ran) / len(ran):.1f}" + ("" if len(ran) == len(PAPER_SPLITS)
                                                                      else f" ({len(ran)}/{len(PAPER_SPLITS)})")
    header = f"| {metric} | " + " | ".join(title(c) for c in cols) + " | AVG |"
    sep = "|" + "---|" * (len(cols) + 2)
    row = f"| {row_name} | " + " | ".join(vals) + f" | {avg} |"
    return "\n".join([header, sep, row])


def write_results(out_dir: str | Path, results: dict[str, dict[str, Any]], *, config: dict | None = None,
                  checkpoint: str | None = None, row_name: str = "EVF-SAM",
                  labels: dict[str, Any] | None = None) -> dict[str, Path]:
    """Writes results.json, results.csv and results.md (cIoU + gIoU tables) atomically into ``out_dir``.

    labels: extra top-level results.json keys that label the run's row (``run_axes.checkpoint_labels``)."""
    import csv
    import io
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # split names at the top level, next to "config" / "checkpoint": the layout scripts/make_table.py
    # and the trainer's results.json use
    payload = {**results, "config": config, "checkpoint": checkpoint, **(labels or {})}
    paths = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    atomic_write_text(paths["json"], json.dumps(payload, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", *METRIC_KEYS])
    for name, m in results.items():
        w.writerow([name, *[m.get(k) for k in METRIC_KEYS]])
    atomic_write_text(paths["csv"], buf.getvalue())
    md = "\n\n".join(format_paper_table(results, k, row_name) for k in ("ciou", "giou"))
    atomic_write_text(paths["md"], md + "\n")
    return paths


_SEMANTIC_SPLITS = {"val": "validation", "validation": "validation", "train": "training", "training": "training"}


def _parse_eval_split(name: str) -> tuple[str, str, str]:
    """REFER ``dataset|split_by|split`` or a semantic split ``ade20k|semantic|val`` / ``mapillary|semantic|val``."""
    from evf_sam.data.refer import parse_split_name

    parts = [p.strip() for p in str(name).split("|")]
    if len(parts) == 3 and parts[1] == "semantic":
        if parts[0] not in ("ade20k", "mapillary") or parts[2] not in _SEMANTIC_SPLITS:
            raise ValueError(f"semantic split {name!r}: expected 'ade20k|semantic|val' or 'mapillary|semantic|val'")
        return parts[0], "semantic", _SEMANTIC_SPLITS[parts[2]]
    return parse_split_name(name)


def _semantic_eval_dataset(cfg, model, tokenizer, dataset: str, split: str):
    """`SemanticEvalDataset` under ``data.semantic_root`` (default ``data.root``). Expressions are
    ``semantic_prefix + class name``; ``semantic_prefix: auto`` uses ``"[semantic] "`` when the
    tokenizer has that token (the multitask release) and the bare class name otherwise."""
    from evf_sam.data.eval_dataset import SemanticEvalDataset
    from evf_sam.data.semantic import build_semantic_reader
    from evf_sam.tokenizer import SEMANTIC_PREFIX, semantic_token_id

    root = cfg.data.get("semantic_root") or cfg.data.root
    prefix = cfg.get("semantic_prefix", "auto")
    if prefix is None or str(prefix) == "auto":
        prefix = SEMANTIC_PREFIX if semantic_token_id(tokenizer) is not None else ""
    return SemanticEvalDataset(build_semantic_reader(dataset, root, split), sam_size=model.sam_image_size,
                               beit_size=model.beit_image_size, prefix=str(prefix),
                               ignore_unlabeled=bool(cfg.get("semantic_ignore_unlabeled", True)),
                               resize_mode=model.resize_mode)


def run_eval_from_config(cfg) -> dict[str, dict[str, Any]]:
    """scripts/eval_refcoco.py: loads the checkpoint, evaluates ``cfg.splits``, writes the results."""
    from omegaconf import OmegaConf

    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.engine import distributed as D
    from evf_sam.models.encoders import load_encoder_tokenizer
    from evf_sam.models.evf_sam import EvfSam

    if cfg.precision not in _DTYPES:
        raise ValueError(f"precision must be one of {list(_DTYPES)}, got {cfg.precision!r}")
    dtype = _DTYPES[cfg.precision]
    splits = [cfg.splits] if isinstance(cfg.splits, str) else list(cfg.splits)
    parsed = [_parse_eval_split(s) for s in splits]  # fail fast on a typo, before loading anything
    info = D.init_distributed(str(cfg.device))
    if info.device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision=fp16 needs CUDA (CPU kernels lack fp16 convolutions); use fp32 or bf16")

    out_dir = cfg.get("output_dir")
    if not out_dir:
        try:
            from hydra.core.hydra_config import HydraConfig

            out_dir = HydraConfig.get().runtime.output_dir
        except Exception:  # not under @hydra.main
            out_dir = "runs/eval"
    out_dir = Path(D.broadcast_object(str(out_dir)))  # rank 0's run dir (timestamps may differ by rank)
    if D.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    ckpt = Path(str(cfg.checkpoint))
    model = EvfSam.from_pretrained(ckpt, dtype=dtype, device=info.device).eval()
    tok_dir = Path(str(cfg.tokenizer)) if cfg.get("tokenizer") else ckpt
    tokenizer = load_encoder_tokenizer(str(model.config.encoder), tok_dir)

    results: dict[str, dict[str, Any]] = {}
    for name, (dataset, split_by, split) in zip(splits, parsed):
        if split_by == "semantic":  # ADE20K / Mapillary val (paper Tab. 6): one expression per class present
            ds = _semantic_eval_dataset(cfg, model, tokenizer, dataset, split)
        else:
            ds = build_eval_dataset(cfg.data.root, dataset, split_by, split, sam_size=model.sam_image_size,
                                    beit_size=model.beit_image_size, resize_mode=model.resize_mode)
        save = out_dir / "masks" / name.replace("|", "_") if cfg.get("save_masks") else None
        m = evaluate(model, tokenizer, ds, device=info.device, dtype=dtype, max_images=cfg.get("max_images"),
                     save_masks_dir=save, progress=bool(cfg.get("progress", True)),
                     batch_size=int(cfg.get("batch_size", 1)), num_workers=int(cfg.data.get("num_workers", 0)),
                     max_text_len=cfg.get("max_text_len"))
        results[name] = m
        if D.is_main():
            miou = f"  mIoU {100 * m['miou']:.2f}" if "miou" in m else ""
            print(f"{name}: cIoU {100 * m['ciou']:.2f}  gIoU {100 * m['giou']:.2f}{miou}  "
                  f"({m['n_expressions']} expressions, {m['n_images']} images)", flush=True)
    if D.is_main():
        from evf_sam.run_axes import checkpoint_labels

        # <run_dir>/final or /best: name the row by its training run, not "final"
        row = f"{ckpt.parent.name}/{ckpt.name}" if ckpt.name in ("final", "best") else (ckpt.name or str(ckpt))
        paths = write_results(out_dir, results, config=OmegaConf.to_container(cfg, resolve=True),
                              checkpoint=str(ckpt), row_name=row, labels=checkpoint_labels(ckpt))
        print()
        print(paths["md"].read_text(), end="")
        print(f"\nresults: {paths['json']}", flush=True)
    D.barrier()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return results

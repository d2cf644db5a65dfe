"""Evaluation loop shared by scripts/eval_refcoco.py and training-time validation.

    metrics = evaluate(model, tokenizer, build_eval_dataset(root, "refcoco", "unc", "val", ...),
                       device="cuda", dtype=torch.bfloat16)
    # {"ciou", "giou", "pr@0.5", ..., "pr@0.9", "n_expressions", "n_images"}

Per batch of ``batch_size`` images: one ``encode_image``; all their expressions go through
``encode_prompts`` and ``decode_masks`` as one batch (`evf_sam.engine.batched_eval`: results equal
batch 1 up to float rounding, DataLoader workers prepare the next batches meanwhile); mask = postprocessed logits (original size) > 0, as the official
evaluation. Under torch.distributed rank r evaluates images r, r + W, ... and the integer metric
sums are all-reduced, so the numbers are identical for every world size (with batch_size=1).

Semantic-segmentation splits (`evf_sam.data.eval_dataset.SemanticEvalDataset`, paper Tab. 6) give items
with a class id per expression (and optionally an ignore mask, left out of I and U): the result then
also has ``miou`` (per-class ΣI/ΣU, mean over the classes that occur) and ``n_classes``.

gRefCOCO splits (`evf_sam.data.eval_dataset.GReferEvalDataset`, ``grefcoco|unc|val``) are scored with
`evf_sam.metrics.GRefMetrics`: + ``n_acc``, ``t_acc``, ``n_no_target`` (an expression may name several
objects or none; a prediction with area <= ``empty_area`` of the image counts as empty: eval.yaml key).
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
from evf_sam.engine.batched_eval import eval_loader, predict_batch
from evf_sam.metrics import ClassIoU, GRefMetrics, RefMetrics
from evf_sam.precision import dtype_of

__all__ = ["METRIC_KEYS", "PAPER_ALIAS", "check_eval_checkpoint", "check_eval_splits", "eval_config", "evaluate",
           "expand_splits", "format_paper_table", "read_results", "run_eval_from_config", "write_results"]

METRIC_KEYS = ("ciou", "giou", "pr@0.5", "pr@0.6", "pr@0.7", "pr@0.8", "pr@0.9", "n_expressions", "n_images",
               "miou",  # miou: semantic splits only (empty in results.csv for REFER splits)
               "n_acc", "t_acc", "n_no_target")  # gRefCOCO splits only
_DATASET_TITLES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg", "refclef": "RefCLEF",
                   "ade20k": "ADE20K", "mapillary": "Mapillary", "grefcoco": "gRefCOCO"}

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
    batch_size: images per SAM encoder forward (`evf_sam.engine.batched_eval`: equal to batch 1 up to
        float rounding; 1 keeps results bit-identical across world sizes).
    num_workers: DataLoader workers reading / preprocessing the next batches during the forward.
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
    if getattr(dataset, "no_target_split", False):  # gRefCOCO: + N-acc / T-acc
        metrics = GRefMetrics(empty_area=dataset.empty_area)
    class_iou = None
    if getattr(dataset, "num_classes", None):  # semantic-segmentation split: + mIoU over its classes
        class_iou = ClassIoU(dataset.num_classes)
    # images batched through the SAM encoder, the next batches prepared by the workers meanwhile
    loader = eval_loader(shard, batch_size=batch_size, num_workers=num_workers, pin_memory=device.type == "cuda")
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        name = getattr(dataset, "name", "eval")
        bar = tqdm(total=len(shard), desc=name if world_size == 1 else f"{name} (rank 0 of {world_size})",
                   unit="img", dynamic_ncols=True)
    try:
        for batch in loader:
            items = batch.items
            with amp:
                low_res = predict_batch(model, tokenizer, batch, device=device, dtype=in_dtype, max_len=max_len)
            for it, item_low_res in zip(items, low_res, strict=True):  # (n, 1, 4h, 4w) per image
                logits = model.postprocess_masks(item_low_res.float(), it.input_size, it.original_size)
                pred = logits[:, 0] > 0  # (n, H, W)
                ignore = getattr(it, "ignore_mask", None)
                if ignore is not None:  # (H, W) unlabeled pixels of semantic data: in neither I nor U
                    pred = pred & ~ignore.to(device)
                no_target = getattr(it, "no_target", None)  # gRefCOCO items
                inter, union = (metrics.update(pred, it.gt_masks.to(device)) if no_target is None
                                else metrics.update(pred, it.gt_masks.to(device), no_target))
                if class_iou is not None:
                    class_iou.update(it.class_ids, inter, union)
                metrics.add_images(1)
                if save_dir is not None:
                    _save_masks(save_dir, it, pred)
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
                  settings: dict[str, Any] | None = None, labels: dict[str, Any] | None = None) -> dict[str, Path]:
    """Writes results.json, results.csv and results.md (cIoU + gIoU tables) atomically into ``out_dir``.

    The one writer of an evaluation's results.json (scripts/eval_refcoco.py, trainer.eval_at_end):
    split names at the top level, next to ``config``, ``checkpoint`` and ``eval_settings`` (what the
    numbers depend on; `run_eval_from_config` reuses finished splits only when they match).
    labels: extra top-level results.json keys that label the run's row (``run_axes.checkpoint_labels``)."""
    import csv
    import io
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # split names at the top level, next to "config" / "checkpoint": the layout scripts/make_table.py
    # and the trainer's results.json use
    payload = {**results, "config": config, "checkpoint": checkpoint, **(labels or {})}
    if settings is not None:
        payload["eval_settings"] = settings
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


_RESULT_META_KEYS = ("config", "checkpoint", "eval_settings")


def read_results(out_dir: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None] | None:
    """``({split: metrics}, eval_settings)`` of ``out_dir/results.json``; None when there is none."""
    import json

    f = Path(out_dir) / "results.json"
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f}: not valid JSON ({e}); pass overwrite=true to replace it") from None
    splits = {k: v for k, v in data.items() if k not in _RESULT_META_KEYS and isinstance(v, dict) and "ciou" in v}
    return splits, data.get("eval_settings")


_SEMANTIC_SPLITS = {"val": "validation", "validation": "validation", "train": "training", "training": "training"}
PAPER_ALIAS = "paper"  # in a split list: the paper's eight RefCOCO-family splits (Table 2)
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"


def _parse_eval_split(name: str) -> tuple[str, str, str]:
    """REFER ``dataset|split_by|split`` or a semantic split ``ade20k|semantic|val`` / ``mapillary|semantic|val``."""
    from evf_sam.data.refer import parse_split_name

    parts = [p.strip() for p in str(name).split("|")]
    if len(parts) == 3 and parts[1] == "semantic":
        if parts[0] not in ("ade20k", "mapillary") or parts[2] not in _SEMANTIC_SPLITS:
            raise ValueError(f"semantic split {name!r}: expected 'ade20k|semantic|val' or 'mapillary|semantic|val'")
        return parts[0], "semantic", _SEMANTIC_SPLITS[parts[2]]
    return parse_split_name(name)


def expand_splits(splits: Any) -> list[str]:
    """A split name or list of them, ``paper`` standing for the eight paper splits; duplicates dropped."""
    from evf_sam.data.refer import PAPER_SPLITS

    items = [splits] if isinstance(splits, str) else list(splits or [])
    out: list[str] = []
    for s in items:
        for name in (PAPER_SPLITS if str(s).strip() == PAPER_ALIAS else [str(s).strip()]):
            if name not in out:
                out.append(name)
    return out


def eval_config(**overrides: Any):
    """configs/eval.yaml (without its Hydra nodes) with ``overrides`` merged: the config
    scripts/eval_refcoco.py composes, for callers outside Hydra (trainer.eval_at_end)."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(CONFIGS_DIR / "eval.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    return OmegaConf.merge(base, OmegaConf.create(overrides))


def _fill_from_run(cfg) -> None:
    """``run=RUN_DIR``: the run's ``final/`` export, its data roots (config_resolved.yaml) and
    ``RUN_DIR/eval`` for whatever the command line leaves unset."""
    from omegaconf import OmegaConf

    run = Path(str(cfg.run))
    if not run.is_dir():
        raise FileNotFoundError(f"run={run}: no such directory (pass a training run directory, the run_dir of "
                                f"scripts/train.py)")
    if not cfg.get("checkpoint"):
        final = run / "final"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(f"run={run}: {final} has no exported model (the run has not finished); export a "
                                    f"checkpoint with `python scripts/export.py {run} --output DIR` and pass "
                                    f"checkpoint=DIR")
        cfg.checkpoint = str(final)
    trained = run / "config_resolved.yaml"
    data = OmegaConf.load(trained).get("data") if trained.is_file() else None
    if not cfg.data.get("root"):
        root = data.get("root") if data is not None else None
        if not root:
            raise ValueError(f"run={run}: {trained} names no data.root (data.kind="
                             f"{data.get('kind') if data is not None else '?'}); pass data.root=DIR")
        cfg.data.root = root
    if not cfg.data.get("semantic_root") and data is not None and data.get("semantic_root"):
        cfg.data.semantic_root = data.semantic_root
    if not cfg.get("output_dir"):
        cfg.output_dir = str(run / "eval")


# configs/eval.yaml keys that hold integers (None allowed where the config says null = a default); the
# config has no typed schema, so "batch_size=abc" would otherwise fail deep inside with no key named
_INT_KEYS = {"batch_size": False, "max_images": True, "max_text_len": True, "data.num_workers": False}


def _check_numbers(cfg) -> None:
    """ValueError naming the key when an integer key of configs/eval.yaml holds something else."""
    from omegaconf import OmegaConf

    for key, nullable in _INT_KEYS.items():
        value = OmegaConf.select(cfg, key)
        if value is None and nullable:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                OmegaConf.update(cfg, key, int(value))
                continue
            raise ValueError(f"{key}={value!r} is not an integer: pass e.g. {key}=1"
                             + (f" (or {key}=null)" if nullable else ""))
        if value < 0 or (key == "batch_size" and value < 1):
            raise ValueError(f"{key}={value} must be {'>= 1' if key == 'batch_size' else '>= 0'}")


class _PlannedSplit:
    """One split to evaluate, checked before any model is loaded (its reader built)."""

    def __init__(self, name: str, dataset: str, split_by: str, split: str, reader: Any):
        self.name, self.dataset, self.split_by, self.split, self.reader = name, dataset, split_by, split, reader


def check_eval_splits(cfg) -> list[_PlannedSplit]:
    """Every split of ``cfg.splits`` exists with its files (refs, instances, the images evaluated;
    ADE20K / Mapillary layouts): errors name the split and the missing file. One reader per
    ``dataset|split_by``, shared by its splits."""
    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.data.grefer import GReferDataset, is_gref_dataset
    from evf_sam.data.refer import ReferDataset
    from evf_sam.data.semantic import build_semantic_reader

    names = expand_splits(cfg.splits)
    if not names:
        raise ValueError("splits is empty: name at least one, e.g. 'splits=[refcoco|unc|val]' or splits=paper")
    parsed = [_parse_eval_split(s) for s in names]  # malformed names first, before touching any file
    root = cfg.data.get("root")
    readers: dict[tuple[str, str], Any] = {}
    planned = []
    for name, (dataset, split_by, split) in zip(names, parsed):
        if split_by == "semantic":
            sem_root = cfg.data.get("semantic_root") or root
            if not sem_root:
                raise ValueError(f"{name}: data.semantic_root (or data.root) is not set")
            reader = readers.get((dataset, split))
            if reader is None:
                reader = readers[(dataset, split)] = build_semantic_reader(dataset, sem_root, split)
        else:
            if not root:
                raise ValueError("data.root is not set: pass data.root=DIR (the directory holding refer_seg/) or "
                                 "run=RUN_DIR")
            reader = readers.get((dataset, split_by))
            if reader is None:
                reader_cls = GReferDataset if is_gref_dataset(dataset) else ReferDataset
                reader = readers[(dataset, split_by)] = reader_cls(root, dataset, split_by)
            entries = build_eval_dataset(root, dataset, split_by, split, reader=reader,
                                         max_images=cfg.get("max_images"))
            missing = [reader.image_path(image_id) for image_id, _ in entries.entries
                       if not reader.image_path(image_id).is_file()]
            if missing:
                raise FileNotFoundError(f"{name}: {len(missing)} of its {len(entries)} images are missing, e.g. "
                                        f"{str(missing[0])!r} (see data/README.md for the image directories)")
        planned.append(_PlannedSplit(name, dataset, split_by, split, reader))
    return planned


def _checkpoint_files(ckpt: Path, tok_dir: Path) -> list[Path]:
    files = [p for p in sorted(ckpt.iterdir()) if p.is_file()]
    if tok_dir.resolve() != ckpt.resolve():
        files += [p for p in sorted(tok_dir.iterdir()) if p.is_file()]
    return files


def _fingerprint(files: list[Path]) -> str:
    """SHA-256 over the names and contents of ``files`` (the weights, config and tokenizer evaluated)."""
    import hashlib

    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
    return h.hexdigest()


def check_eval_checkpoint(cfg):
    """(checkpoint dir, tokenizer dir, tokenizer): the directory exists, its config.json describes an
    EVF-SAM, a weights file is there and the tokenizer loads; the weights are read later."""
    from evf_sam.hub import resolve_checkpoint
    from evf_sam.models.checkpoint import WEIGHT_FILES, config_from_official, read_official_config
    from evf_sam.models.encoders import load_encoder_tokenizer

    if not cfg.get("checkpoint"):
        raise ValueError("checkpoint is not set: pass checkpoint=DIR (an EVF-SAM directory: official release or "
                         "a training run's final/) or run=RUN_DIR")
    ckpt = resolve_checkpoint(str(cfg.checkpoint))
    official = read_official_config(ckpt)
    config = config_from_official(official, source=str(ckpt / "config.json"))
    if not any((ckpt / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(f"no weights in {str(ckpt)!r}: expected one of {', '.join(WEIGHT_FILES)}")
    tok_dir = Path(str(cfg.tokenizer)) if cfg.get("tokenizer") else ckpt
    try:
        tokenizer = load_encoder_tokenizer(str(config.encoder), tok_dir)
    except Exception as e:
        raise FileNotFoundError(f"no usable {config.encoder} tokenizer in {str(tok_dir)!r} ({type(e).__name__}: {e}); "
                                f"pass tokenizer=DIR") from None
    return ckpt, tok_dir, tokenizer


def _eval_settings(cfg, ckpt: Path, tok_dir: Path) -> dict[str, Any]:
    """What an evaluation's numbers depend on (not the device or world size: results are identical)."""
    def path(p):
        return str(Path(str(p)).resolve()) if p else None

    return {"weights_sha256": _fingerprint(_checkpoint_files(ckpt, tok_dir)), "precision": str(cfg.precision),
            "max_images": cfg.get("max_images"), "batch_size": int(cfg.get("batch_size", 1)),
            "max_text_len": cfg.get("max_text_len"), "data_root": path(cfg.data.get("root")),
            "semantic_root": path(cfg.data.get("semantic_root")), "semantic_prefix": cfg.get("semantic_prefix"),
            "semantic_ignore_unlabeled": bool(cfg.get("semantic_ignore_unlabeled", True)),
            "empty_area": float(cfg.get("empty_area", 0.0))}


def _reusable_results(out_dir: Path, settings: dict[str, Any], *, overwrite: bool,
                      replace_mismatched: bool) -> dict[str, dict[str, Any]]:
    """Finished splits of an earlier, interrupted (or narrower) evaluation into ``out_dir`` with the same
    settings; ``{}`` with overwrite=true. Other settings: ValueError, or ``{}`` with ``replace_mismatched``."""
    found = None if overwrite else read_results(out_dir)
    if not found:
        return {}
    done, old = found
    if old == settings:
        return done
    if old is None:
        why = "no eval_settings recorded"
    else:
        key = next(k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
        why = f"{key} was {old.get(key)!r}, now {settings.get(key)!r}"
    if replace_mismatched:
        logger.warning("%s: earlier results are of another evaluation (%s); replacing them", out_dir, why)
        return {}
    raise ValueError(f"output_dir {str(out_dir)!r} already holds results of another evaluation ({why}); pass "
                     f"overwrite=true to replace them or choose another output_dir")


def _semantic_eval_dataset(cfg, model, tokenizer, reader):
    """`SemanticEvalDataset` of a checked reader. Expressions are ``semantic_prefix + class name``;
    ``semantic_prefix: auto`` uses ``"[semantic] "`` when the tokenizer has that token (the multitask
    release) and the bare class name otherwise."""
    from evf_sam.data.eval_dataset import SemanticEvalDataset
    from evf_sam.tokenizer import SEMANTIC_PREFIX, semantic_token_id

    prefix = cfg.get("semantic_prefix", "auto")
    if prefix is None or str(prefix) == "auto":
        prefix = SEMANTIC_PREFIX if semantic_token_id(tokenizer) is not None else ""
    return SemanticEvalDataset(reader, sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                               prefix=str(prefix), ignore_unlabeled=bool(cfg.get("semantic_ignore_unlabeled", True)),
                               resize_mode=model.resize_mode)


def run_eval_from_config(cfg, *, replace_mismatched: bool = False) -> dict[str, dict[str, Any]]:
    """scripts/eval_refcoco.py (and trainer.eval_at_end): checks every input, loads the checkpoint,
    evaluates ``cfg.splits`` and writes the results after each split.

    Before the model is loaded: the precision, every split's name and files (`check_eval_splits`),
    the checkpoint directory and tokenizer (`check_eval_checkpoint`), and an earlier results.json in
    the output directory. Each finished split is added to results.json / .csv / .md at once
    (atomically), so an interrupted evaluation keeps what it finished, and running the same command
    again skips those splits (same weights and settings; ``overwrite=true`` redoes them; other
    settings are an error, or replaced with ``replace_mismatched``). ``run=RUN_DIR`` evaluates a
    training run's ``final/`` into ``RUN_DIR/eval`` (`_fill_from_run`). Returns ``{split: metrics}``
    of every split asked for, reused ones included.
    """
    from omegaconf import OmegaConf

    from evf_sam.data.eval_dataset import build_eval_dataset
    from evf_sam.engine import distributed as D
    from evf_sam.models.evf_sam import EvfSam

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))  # a plain copy: run= fills keys in
    dtype = dtype_of(cfg.precision)
    _check_numbers(cfg)
    for name in expand_splits(cfg.splits):  # a malformed split name fails before any file is read
        _parse_eval_split(name)
    if cfg.get("run"):
        _fill_from_run(cfg)
    # every input before the process group (and the model): each rank reads the same files
    planned = check_eval_splits(cfg)
    ckpt, tok_dir, tokenizer = check_eval_checkpoint(cfg)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
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
    settings = done = problem = None
    if D.is_main():
        settings = _eval_settings(cfg, ckpt, tok_dir)
        try:
            done = _reusable_results(out_dir, settings, overwrite=bool(cfg.get("overwrite", False)),
                                     replace_mismatched=replace_mismatched)
        except ValueError as e:
            problem = str(e)
    settings, done, problem = D.broadcast_object((settings, done, problem))
    if problem:
        raise ValueError(problem)
    config = OmegaConf.to_container(cfg, resolve=True)
    if D.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))

    results: dict[str, dict[str, Any]] = dict(done)  # earlier splits of the same evaluation stay in the files
    todo = [p for p in planned if p.name not in done]
    for p in planned:
        if p.name in done:
            logger.info("%s: done earlier, kept from %s (overwrite=true evaluates it again)", p.name,
                        out_dir / "results.json")
    from evf_sam.run_axes import checkpoint_labels

    # <run_dir>/final or /best: name the row by its training run, not "final"
    row = f"{ckpt.parent.name}/{ckpt.name}" if ckpt.name in ("final", "best") else (ckpt.name or str(ckpt))
    labels = checkpoint_labels(ckpt)
    if todo:
        model = EvfSam.from_pretrained(ckpt, dtype=dtype, device=info.device).eval()
        for p in todo:
            if p.split_by == "semantic":  # ADE20K / Mapillary val (paper Tab. 6): one expression per class present
                ds = _semantic_eval_dataset(cfg, model, tokenizer, p.reader)
            else:
                ds = build_eval_dataset(cfg.data.root, p.dataset, p.split_by, p.split, reader=p.reader,
                                        sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                                        resize_mode=model.resize_mode, empty_area=float(cfg.get("empty_area", 0.0)))
            save = out_dir / "masks" / p.name.replace("|", "_") if cfg.get("save_masks") else None
            m = evaluate(model, tokenizer, ds, device=info.device, dtype=dtype, max_images=cfg.get("max_images"),
                         save_masks_dir=save, progress=bool(cfg.get("progress", True)),
                         batch_size=int(cfg.get("batch_size", 1)), num_workers=int(cfg.data.get("num_workers", 0)),
                         max_text_len=cfg.get("max_text_len"))
            results[p.name] = m
            if D.is_main():
                write_results(out_dir, results, config=config, checkpoint=str(ckpt), row_name=row, settings=settings,
                      labels=labels)
                miou = f"  mIoU {100 * m['miou']:.2f}" if "miou" in m else ""
                miou += "".join(f"  {k} {'-' if m[k] is None else f'{100 * m[k]:.2f}'}"
                                for k in ("n_acc", "t_acc") if k in m)  # gRefCOCO
                logger.info("%s: cIoU %.2f  gIoU %.2f%s  (%d expressions, %d images)", p.name, 100 * m["ciou"],
                            100 * m["giou"], miou, m["n_expressions"], m["n_images"])
        del model
    elif D.is_main():
        write_results(out_dir, results, config=config, checkpoint=str(ckpt), row_name=row, settings=settings,
                      labels=labels)
    if D.is_main():
        logger.info("\n%s", (out_dir / "results.md").read_text().rstrip())
        logger.info("\nresults: %s", out_dir / "results.json")
    D.barrier()
    if owns_group and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return {p.name: results[p.name] for p in planned}

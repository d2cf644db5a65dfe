"""EVF-SAM training: DeepSpeed ZeRO-2, exact resume, validation, export.

    python scripts/train.py [model=tiny data=synthetic] [key=value ...]      # calls train(cfg)

One run directory (``cfg.run_dir``) holds everything::

    config.yaml, config_resolved.yaml   the Hydra config as composed / resolved
    train.log                           the console log of rank 0
    metrics.jsonl                       {"type": "train", "step", "loss", "bce", "dice", "lr", ...} per step,
                                        {"type": "val", "step", "ciou", "giou", ...} per validation
    checkpoints/step_00001000/          DeepSpeed tag dir (+ trainer_state.json, rng_rank{r}.pt, complete)
    checkpoints/latest                  name of the newest complete tag (written last, atomically)
    best/, final/                       EvfSam.save_pretrained exports (+ tokenizer files)
    results.json                        final validation metrics ({"<split>": {...}, "best": {...}, ...})

Resume (``resume=auto``): the newest tag dir with a ``complete`` marker is loaded (model, optimizer,
LR scheduler, step, best metric, per-rank RNG); the data order is a function of (seed, step), so the
run continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evf_sam.atomic import atomic_write_text
from evf_sam.config import resolved
from evf_sam.data.batch import Batch, text_length
from evf_sam.engine import distributed as D
from evf_sam.engine.losses import mask_losses, valid_mask
from evf_sam.engine.optim import apply_trainable, build_optimizer, build_scheduler, format_param_table
from evf_sam.engine.run_logging import setup_logging
from evf_sam.engine.state import TrainState, rng_state, seed_everything, set_rng_state
from evf_sam.models.sam_backends import sam_family

__all__ = ["NonFiniteLossError", "TrainState", "Trainer", "build_deepspeed_config", "find_latest_checkpoint",
           "resolve_precision", "train"]

logger = logging.getLogger(__name__)

TAG_FMT = "step_{:08d}"
COMPLETE = "complete"


class NonFiniteLossError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Config helpers


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA with bf16 support, else fp32; fp16 / bf16 on CPU fall back with a warning."""
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("trainer.precision=fp16 needs CUDA (DeepSpeed's fp16 loss scaling); use bf16 or fp32 on CPU")
    return precision


def build_deepspeed_config(ds: dict, *, micro_batch_size: int, grad_accum: int, precision: str) -> dict:
    """The DeepSpeed config dict from the ``deepspeed`` YAML group + trainer settings."""
    zero = {
        "stage": int(ds.get("stage", 2)),
        "overlap_comm": bool(ds.get("overlap_comm", True)),
        "contiguous_gradients": bool(ds.get("contiguous_gradients", True)),
        "reduce_scatter": bool(ds.get("reduce_scatter", True)),
        "reduce_bucket_size": int(float(ds.get("reduce_bucket_size", 5e8))),
        "allgather_bucket_size": int(float(ds.get("allgather_bucket_size", 5e8))),
    }
    cfg = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(grad_accum),
        "gradient_clipping": float(ds.get("gradient_clipping", 1.0)),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    extra = ds.get("extra") or {}
    cfg.update(extra)
    return cfg


def find_latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest tag dir under ``ckpt_dir`` that has the ``complete`` marker (None if none)."""
    if not ckpt_dir.is_dir():
        return None
    tags = []
    for d in ckpt_dir.iterdir():
        if d.is_dir() and d.name.startswith("step_") and (d / COMPLETE).is_file():
            try:
                tags.append((int(d.name[5:]), d))
            except ValueError:
                continue
    return max(tags)[1] if tags else None


# ---------------------------------------------------------------------------------------------
# Trainer


class Trainer:
    """Builds everything from the config, then `fit()`. All ranks construct one."""

    def __init__(self, cfg, *, config_yaml: str | None = None):
        from omegaconf import OmegaConf

        self.cfg = cfg
        tc = cfg.trainer
        self.run_dir = Path(cfg.run_dir).absolute()
        self.dist = D.init_distributed(tc.device)
        self.device = self.dist.device
        self.rank, self.world = self.dist.rank, self.dist.world_size
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        D.barrier()
        setup_logging(self.run_dir, self.rank)
        if tc.engine != "deepspeed":
            raise ValueError(f"trainer.engine={tc.engine!r}: only 'deepspeed' is implemented")
        self.precision = resolve_precision(tc.precision, self.device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]
        self.mbs, self.gas = int(tc.micro_batch_size), int(tc.grad_accum)
        self.total_steps = int(tc.total_steps)

        # 1. data files first: fail before any model is built
        self.data_info = prepare_data(cfg, self.run_dir)

        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", config_yaml or OmegaConf.to_yaml(cfg))
            atomic_write_text(self.run_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        logger.info("run dir %s | world %d | device %s | backend %s | precision %s", self.run_dir, self.world,
                    self.device, self.dist.backend, self.precision)

        # 2. tokenizer + model
        seed_everything(int(cfg.seed))
        self.model, self.tokenizer, self.tokenizer_dir = build_model_and_tokenizer(cfg, self.run_dir)
        trained = apply_trainable(self.model, list(cfg.trainable.params))
        if sam_family(self.model.config.sam_variant) == "sam2" and self.model.config.sam_stability_fallback is None \
                and any(n.startswith("sam.sam_mask_decoder.") for n in trained):
            self.model.set_sam_stability_fallback(False)
            logger.info("SAM-2 mask decoder trains: its eval-mode stability fallback (which would swap in the "
                        "unsupervised multimask outputs) is off; the exported config.json records it")
        logger.info("parameters (trainable globs %s):\n%s", list(cfg.trainable.params), format_param_table(self.model))
        self.model.to(self.device)

        # 3. data
        self.use_cache = bool(cfg.data.get("embedding_cache"))
        if self.use_cache and sam_family(self.model.config.sam_variant) == "sam2":
            raise ValueError(f"data.embedding_cache is set, but SAM {self.model.config.sam_variant!r} gives "
                             f"multi-scale image features that the cache does not store; set data.embedding_cache=null")
        self.dataset = build_train_dataset(cfg, self.model, self.tokenizer, with_sam_images=not self.use_cache)
        if hasattr(self.dataset, "summary"):
            logger.info(self.dataset.summary())
        self.val_dataset = build_val_dataset(cfg, self.model) if int(tc.val_every) > 0 or tc.val_at_end else None
        self.cache = None
        if self.use_cache:
            from evf_sam.engine.embedding_cache import EmbeddingCache

            self.cache = EmbeddingCache.open_or_build(
                cfg.data.embedding_cache, self.model, self.dataset.image_ids(), self.dataset.sam_image,
                device=self.device, batch_size=int(cfg.data.get("embedding_cache_batch_size", 8)),
                dtype=str(cfg.data.get("embedding_cache_dtype", "float16")),
                autocast_dtype=self.dtype if self.precision != "fp32" else None)

        # 4. optimizer, schedule, DeepSpeed
        import deepspeed

        oc = cfg.optim
        optimizer = build_optimizer(self.model, lr=float(oc.lr), weight_decay=float(oc.weight_decay),
                                    betas=tuple(oc.betas), eps=float(oc.eps))
        scheduler = build_scheduler(optimizer, total_steps=self.total_steps, warmup_steps=int(oc.warmup_steps),
                                    schedule=str(oc.schedule), min_lr_ratio=float(oc.min_lr_ratio))
        self.ds_config = build_deepspeed_config(OmegaConf.to_container(cfg.deepspeed, resolve=True),
                                                micro_batch_size=self.mbs, grad_accum=self.gas,
                                                precision=self.precision)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False)
        self.module = self.engine.module
        self.state = TrainState()
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.logger_backend = None

    # -- checkpoints ------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        tag = TAG_FMT.format(self.state.step)
        d = self.ckpt_dir / tag
        if self.rank == 0 and d.exists():  # a stale, incomplete attempt at the same step
            shutil.rmtree(d)
        D.barrier()
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state={"trainer_state": asdict(self.state)},
                                    save_latest=False)
        torch.save(rng_state(), d / f"rng_rank{self.rank}.pt")
        D.barrier()
        if self.rank == 0:
            atomic_write_text(d / "trainer_state.json", json.dumps(asdict(self.state), indent=1))
            atomic_write_text(d / COMPLETE, json.dumps({"step": self.state.step, "world_size": self.world}))
            atomic_write_text(self.ckpt_dir / "latest", tag)
            self._prune_checkpoints()
        D.barrier()
        logger.info("checkpoint %s written", d)
        return d

    def _prune_checkpoints(self) -> None:
        keep = int(self.cfg.trainer.keep_last)
        if keep <= 0:
            return
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if (p / COMPLETE).is_file())
        for p in done[:-keep]:
            shutil.rmtree(p, ignore_errors=True)

    def maybe_resume(self) -> None:
        resume = str(self.cfg.resume)
        if resume in ("none", "None", "false", "False"):
            return
        path = find_latest_checkpoint(self.ckpt_dir) if resume == "auto" else Path(resume)
        path = D.broadcast_object(str(path) if path else None)
        if path is None:
            logger.info("resume=auto: no complete checkpoint in %s; starting from step 0", self.ckpt_dir)
            return
        path = Path(path)
        if not (path / COMPLETE).is_file():
            raise FileNotFoundError(f"resume={resume!r}: {path} is not a complete checkpoint (no '{COMPLETE}' marker)")
        marker = json.loads((path / COMPLETE).read_text())
        load_path, client = self.engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        self.state = TrainState(**client["trainer_state"])
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file() and marker.get("world_size") == self.world:
            set_rng_state(torch.load(rng, weights_only=False))
        else:
            logger.warning("resume: no RNG state for rank %d at world size %d; reseeding", self.rank, self.world)
            seed_everything(int(self.cfg.seed) + 1000 * self.state.step + self.rank)
        logger.info("resumed from %s at step %d (lr %.3g)", path, self.state.step, self.scheduler.get_last_lr()[0])

    # -- one step -------------------------------------------------------------------------------

    def _forward_loss(self, batch: Batch):
        batch = batch.to(self.device, dtype=self.dtype)
        emb = None
        if self.cache is not None:
            emb = self.cache.get(batch.image_ids, device=self.device, dtype=self.dtype)
        low_res, _ = self.engine(None if emb is not None else batch.sam_images, batch.beit_images, batch.text_ids,
                                 batch.text_padding_mask, batch.image_index, image_embeddings=emb)
        s = batch.gt_masks.shape[-1]
        lc = self.cfg.trainer.loss
        return mask_losses(low_res, batch.gt_masks, valid_mask(batch.input_sizes, batch.image_index, s),
                           bce_weight=float(lc.bce_weight), dice_weight=float(lc.dice_weight)), batch

    def _poison(self):
        """A loss whose gradients are NaN: DeepSpeed's overflow check then skips the optimizer step."""
        p = next(p for p in self.module.parameters() if p.requires_grad)
        return p.reshape(-1)[0].float() * float("nan")

    def train_step(self, micro_batches: list[Batch]) -> dict[str, Any]:
        parts = np.zeros(3)
        n_img = n_expr = 0
        bad = False
        for batch in micro_batches:
            losses, batch = self._forward_loss(batch)
            finite = bool(torch.isfinite(losses.total).item())
            bad_now = D.any_true(not finite)
            if bad_now:
                bad = True
                loss = self._poison()
            else:
                loss = losses.total
                parts += [losses.total.item(), losses.bce.item(), losses.dice.item()]
            self.engine.backward(loss)
            self.engine.step()
            n_img += batch.num_images
            n_expr += batch.num_expressions
        applied = self.engine.was_step_applied() if hasattr(self.engine, "was_step_applied") else not bad
        parts = D.all_reduce_mean((parts / len(micro_batches)).tolist())
        counts = D.all_reduce_mean([n_img, n_expr])
        return {"loss": parts[0], "bce": parts[1], "dice": parts[2], "nonfinite": bad, "applied": bool(applied),
                "images": int(round(counts[0] * self.world)), "expressions": int(round(counts[1] * self.world))}

    # -- validation ------------------------------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        self.module.eval()
        try:
            metrics = run_validation(self.cfg, self.module, self.tokenizer, self.val_dataset, device=self.device,
                                     dtype=self.dtype)
        finally:
            self._train_mode()
        return metrics

    def _train_mode(self) -> None:
        self.module.train()
        self.module.sam.image_encoder.eval()  # frozen: eval mode always
        for name, m in self.module.named_children():  # fully frozen top-level parts stay in eval mode
            if not any(p.requires_grad for p in m.parameters()):
                m.eval()

    # -- logging ---------------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.logger_backend is not None:
            step = record.get("step")
            prefix = record.get("type", "train")
            self.logger_backend.log({f"{prefix}/{k}": v for k, v in record.items()
                                     if isinstance(v, (int, float)) and k != "step"}, step=step)

    def _init_logger(self) -> None:
        lc = self.cfg.logger
        if self.rank != 0 or lc.name == "none":
            return
        if lc.name != "wandb":
            raise ValueError(f"logger={lc.name!r}: choose wandb or none")
        import wandb
        from omegaconf import OmegaConf

        mode = lc.mode or ("online" if lc.project else "offline")
        self.logger_backend = wandb.init(project=lc.project or "evf-sam", entity=lc.entity, name=self.cfg.name,
                                         dir=str(self.run_dir), mode=mode, resume="allow",
                                         id=lc.get("run_id") or None,
                                         config=OmegaConf.to_container(self.cfg, resolve=True))

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        from torch.utils.data import DataLoader

        from evf_sam.data.train_dataset import StepBatchSampler

        tc = self.cfg.trainer
        self.maybe_resume()
        self._init_logger()
        self._train_mode()
        start = self.state.step
        stop = self.total_steps
        if tc.max_steps_this_run is not None:
            stop = min(stop, start + int(tc.max_steps_this_run))
        sampler = StepBatchSampler(micro_batch_size=self.mbs, grad_accum=self.gas, rank=self.rank,
                                   world_size=self.world, total_steps=stop, start_step=start)
        nw = int(self.cfg.data.num_workers)
        loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=self.dataset.collate, num_workers=nw,
                            pin_memory=self.device.type == "cuda", persistent_workers=False,
                            prefetch_factor=2 if nw > 0 else None)
        it = iter(loader)
        bar = None
        if self.rank == 0 and tc.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=start, desc="train", dynamic_ncols=True, file=sys.stdout)
        logger.info("training steps %d -> %d of %d | micro-batch %d x accumulation %d x world %d = %d images/step",
                    start, stop, self.total_steps, self.mbs, self.gas, self.world, self.mbs * self.gas * self.world)
        t_last, s_last = time.perf_counter(), self.state.samples
        while self.state.step < stop:
            t0 = time.perf_counter()
            lr = float(self.scheduler.get_last_lr()[0])  # the LR this step uses
            micro = [next(it) for _ in range(self.gas)]
            out = self.train_step(micro)
            dt = time.perf_counter() - t0
            self.state.step += 1
            self.state.samples += out["images"]
            self.state.expressions += out["expressions"]
            if out["nonfinite"] or not out["applied"]:
                self.state.skipped_steps += 1
                self.state.nonfinite_in_row += 1 if out["nonfinite"] else 0
                logger.warning("step %d: %s; optimizer step skipped (%d in a row)", self.state.step,
                               "non-finite loss" if out["nonfinite"] else "gradient overflow",
                               self.state.nonfinite_in_row)
                if self.state.nonfinite_in_row >= int(tc.max_nonfinite_steps):
                    raise NonFiniteLossError(
                        f"{self.state.nonfinite_in_row} steps in a row had a NaN/inf loss (last at step "
                        f"{self.state.step}); stopping. Lower optim.lr, use trainer.precision=fp32 or bf16, or "
                        f"check the data (trainer.max_nonfinite_steps={tc.max_nonfinite_steps}).")
            else:
                self.state.nonfinite_in_row = 0
            rec = {"type": "train", "step": self.state.step, "loss": out["loss"], "bce": out["bce"],
                   "dice": out["dice"], "lr": lr, "samples_per_s": out["images"] / dt, "step_time_s": dt,
                   "skipped": bool(out["nonfinite"] or not out["applied"])}
            if out["nonfinite"]:
                rec.update(loss=None, bce=None, dice=None)
            self._log(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss']:.4f}", sps=f"{out['images'] / dt:.1f}")
            if self.state.step % int(tc.log_every) == 0 or self.state.step == stop:
                now = time.perf_counter()
                sps = (self.state.samples - s_last) / max(now - t_last, 1e-9)
                t_last, s_last = now, self.state.samples
                mem = ""
                if self.device.type == "cuda":
                    mem = f" | mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"
                logger.info("step %d/%d | loss %.4f (bce %.4f, dice %.4f) | lr %.3g | %.1f samples/s%s",
                            self.state.step, self.total_steps, out["loss"], out["bce"], out["dice"], lr, sps, mem)
            if int(tc.val_every) > 0 and self.state.step % int(tc.val_every) == 0 and self.state.step < self.total_steps:
                self._validate_and_export()
            if int(tc.ckpt_every) > 0 and self.state.step % int(tc.ckpt_every) == 0 and self.state.step < stop:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        del it, loader

        finished = self.state.step >= self.total_steps
        if int(tc.ckpt_every) >= 0:
            self.save_checkpoint()
        results: dict[str, Any] = {"step": self.state.step, "finished": finished}
        if finished:
            metrics = self._validate_and_export() if tc.val_at_end and self.val_dataset is not None else None
            final = self.export(self.run_dir / "final")
            results.update(final=str(final))
            if metrics is not None:
                extra = metrics.pop("extra_splits", None) or {}  # e.g. ade20k|semantic|val (data.val_semantic)
                results[metrics["split"]] = metrics
                results.update(extra)
            if self.rank == 0:
                best = {"step": self.state.best_step, self.cfg.trainer.best_metric: self.state.best_metric,
                        "path": str(self.run_dir / "best")} if self.state.best_step >= 0 else None
                results.update(best=best, checkpoint=str(final), samples=self.state.samples,
                               config=resolved(self.cfg))
                atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=1))
        if self.logger_backend is not None:
            self.logger_backend.finish()
        D.barrier()
        return results

    def _validate_and_export(self) -> dict[str, Any] | None:
        if self.val_dataset is None:
            return None
        metrics = self.validate()
        rec = {"type": "val", "step": self.state.step, **{k: v for k, v in metrics.items()
                                                          if isinstance(v, (int, float, str))}}
        self._log(rec)
        for name, m in (metrics.get("extra_splits") or {}).items():  # data.val_semantic
            self._log({"type": "val", "step": self.state.step, **{k: v for k, v in m.items()
                                                                  if isinstance(v, (int, float, str))}})
            logger.info("validation step %d on %s: %s", self.state.step, name,
                        ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)))
        key = self.cfg.trainer.best_metric
        logger.info("validation step %d on %s: %s", self.state.step, metrics.get("split"),
                    ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        if float(metrics[key]) > self.state.best_metric:
            self.state.best_metric, self.state.best_step = float(metrics[key]), self.state.step
            self.export(self.run_dir / "best")
        return metrics

    def export(self, path: Path) -> Path:
        """``EvfSam.save_pretrained`` of the current weights (ZeRO-2 keeps full parameters on every rank)."""
        if self.rank == 0:
            self.module.save_pretrained(path, tokenizer_dir=self.tokenizer_dir)
            logger.info("exported %s", path)
        D.barrier()
        return path


def train(cfg, *, config_yaml: str | None = None) -> dict[str, Any]:
    """Entry point of scripts/train.py (every rank)."""
    trainer = Trainer(cfg, config_yaml=config_yaml)
    return trainer.fit()


# ---------------------------------------------------------------------------------------------
# Building the parts from the config (also used by benchmarks/bench_train.py)


def _sources(dc) -> list:
    from evf_sam.data.train_dataset import Source

    out = []
    for name, s in dc.sources.items():
        if float(s.rate) <= 0:
            continue
        out.append(Source(name=str(name), dataset=str(s.dataset), split_by=str(s.split_by), rate=float(s.rate),
                          split=str(s.get("split", "train"))))
    return out


def prepare_data(cfg, run_dir: Path) -> dict[str, Any]:
    """Checks (or, for synthetic data, generates) the data root; runs before any model is built."""
    dc = cfg.data
    if dc.kind == "random":
        return {"kind": "random"}
    if dc.kind != "refer":
        raise ValueError(f"data.kind must be refer or random, got {dc.kind!r}")
    from evf_sam.data.train_dataset import check_refer_root

    syn = dc.get("synthetic")
    if syn is not None and syn.get("generate", False):
        root = Path(dc.root)
        if D.is_main():  # idempotent: a complete dataset with the same parameters is reused
            from evf_sam.data.synthetic import make_synthetic_refer

            kwargs = {k: v for k, v in resolved(syn).items() if k != "generate"}
            stats = make_synthetic_refer(root, **kwargs)
            logger.info("synthetic REFER data in %s (%s)", root, "reused" if stats.get("reused") else "generated")
        D.barrier()
    if _sources(dc) or not _semantic_specs(dc):
        check_refer_root(dc.root, _sources(dc))
    _semantic_readers(dc)  # ADE20K / Mapillary layout (FileNotFoundError naming the path), before any model
    return {"kind": "refer", "root": str(dc.root)}


def build_model_and_tokenizer(cfg, run_dir: Path):
    """(EvfSam, tokenizer, tokenizer_dir) from ``cfg.model``; a tiny tokenizer is trained for model=tiny."""
    from evf_sam.models.encoders import load_encoder_tokenizer
    from evf_sam.models.evf_sam import EvfSam

    mc = cfg.model
    tok_dir = mc.get("tokenizer")
    if tok_dir is None:
        if not mc.get("make_tiny_tokenizer", False):
            raise ValueError("model.tokenizer is not set: point it at a directory with BEiT-3's sentencepiece.bpe.model "
                             "(e.g. the official evf-sam checkpoint directory)")
        tok_dir = run_dir / "tokenizer"
        if D.is_main() and not (tok_dir / "sentencepiece.bpe.model").is_file():
            from evf_sam.testing import TINY_SENTENCES
            from evf_sam.tokenizer import train_sentencepiece

            sentences = list(TINY_SENTENCES)
            corpus = Path(str(cfg.data.get("root") or "")) / "refer_seg" / "sentences.txt"  # synthetic data
            if cfg.data.kind == "refer" and corpus.is_file():
                sentences += [x for x in corpus.read_text().splitlines() if x.strip()]
            train_sentencepiece(sentences, tok_dir, int(mc.get("tiny_vocab_size", 128)))
            if _uses_semantic_prefix(cfg.data):  # the multitask release's added token, next free id
                from evf_sam.tokenizer import SEMANTIC_TOKEN, add_tokens

                add_tokens(tok_dir, [SEMANTIC_TOKEN])
        D.barrier()
    tokenizer = load_encoder_tokenizer(str(mc.encoder), tok_dir)
    if mc.get("init_from"):
        model = EvfSam.from_pretrained(mc.init_from)
        model.sam.image_encoder.requires_grad_(False)
    else:
        model = _build_model(mc, tokenizer)
    if mc.get("grad_checkpointing", False):
        if not hasattr(model.encoder, "set_grad_checkpointing"):
            raise ValueError(f"model.grad_checkpointing=true is not supported by encoder {mc.encoder!r} (BEiT-3 only)")
        model.encoder.set_grad_checkpointing(True)
    return model, tokenizer, Path(tok_dir)


def _build_model(mc, tokenizer):
    """A fresh EvfSam from ``cfg.model`` (SAM / BEiT-3 initialised from their .pth files if given)."""
    from evf_sam.models.evf_sam import EvfSamConfig, build_evf_sam

    overrides = dict(resolved(mc.get("encoder_overrides")) or {})
    if mc.get("make_tiny_tokenizer", False) and mc.get("tokenizer") is None:
        overrides.setdefault("vocab_size", len(tokenizer))
    config = EvfSamConfig(sam_variant=str(mc.sam_variant), encoder=str(mc.encoder), encoder_overrides=overrides,
                          fusion=str(mc.get("fusion") or "early"), feature=mc.get("feature"),
                          fused_layers=mc.get("fused_layers"), encoder_path=mc.get("encoder_path"),
                          multimask_output=bool(mc.get("multimask_output", False)),
                          sam_stability_fallback=mc.get("sam_stability_fallback"))
    return build_evf_sam(config, sam_checkpoint=mc.get("sam_checkpoint"),
                         encoder_checkpoint=mc.get("encoder_checkpoint"))


def _max_text_len(cfg, model) -> int:
    return text_length(cfg.data.get("max_text_len"), model.max_text_len)


# -- semantic-segmentation data (paper Tab. 6; configs/data/refer_mix_semantic.yaml) ---------------

def _semantic_specs(dc) -> list[dict[str, Any]]:
    """``data.semantic_sources`` with rate > 0: [{name, dataset, split, rate, root, version}]."""
    out = []
    for name, s in (dc.get("semantic_sources") or {}).items():
        if s is None or float(s.get("rate", 0.0)) <= 0:
            continue
        out.append({"name": str(name), "dataset": str(s.get("dataset", name)), "split": str(s.get("split", "training")),
                    "rate": float(s.rate), "root": str(s.get("root") or _semantic_root(dc)),
                    "version": str(s.get("version", "auto"))})
    return out


def _semantic_root(dc) -> str:
    root = dc.get("semantic_root") or dc.get("root")
    if not root:
        raise ValueError("data.semantic_root is not set: the directory holding ADEChallengeData2016/ and mapillary/ "
                         "(see data/README.md)")
    return str(root)


def _semantic_prefix(dc) -> str:
    from evf_sam.tokenizer import SEMANTIC_PREFIX

    p = dc.get("semantic_prefix")
    return SEMANTIC_PREFIX if p is None else str(p)


def _val_semantic_prefix(dc) -> str:
    """``data.val_semantic.prefix``; "auto": the training prefix if semantic data is trained on, else none
    (a model trained on RES data only is asked with the bare class name, as EVF-SAM's ValDataset does)."""
    vs = dc.get("val_semantic")
    p = "auto" if vs is None else vs.get("prefix", "auto")
    if p is None:
        return ""
    if str(p) == "auto":
        return _semantic_prefix(dc) if _semantic_specs(dc) else ""
    return str(p)


def _uses_semantic_prefix(dc) -> bool:
    from evf_sam.tokenizer import SEMANTIC_TOKEN

    if dc.get("kind") != "refer":
        return False
    train = bool(_semantic_specs(dc)) and SEMANTIC_TOKEN in _semantic_prefix(dc)
    return train or (dc.get("val_semantic") is not None and SEMANTIC_TOKEN in _val_semantic_prefix(dc))


def _semantic_readers(dc, *, val: bool = True) -> dict[str, Any]:
    """Readers of the semantic training sources (+ ``"val"``: the validation split); raise naming what is missing."""
    from evf_sam.data.semantic import build_semantic_reader

    out = {}
    for sp in _semantic_specs(dc):
        kw = {"version": sp["version"]} if sp["dataset"] == "mapillary" else {}
        out[sp["name"]] = build_semantic_reader(sp["dataset"], sp["root"], sp["split"], **kw)
    vs = dc.get("val_semantic")
    if val and vs is not None:
        kw = {"version": str(vs.get("version", "auto"))} if str(vs.dataset) == "mapillary" else {}
        out["val"] = build_semantic_reader(str(vs.dataset), str(vs.get("root") or _semantic_root(dc)),
                                           str(vs.get("split", "validation")), **kw)
    return out


def _check_semantic_tokenizer(cfg, model, tokenizer) -> None:
    """``[semantic]`` must be one token of the tokenizer with a row in the text embedding."""
    if not _uses_semantic_prefix(cfg.data):
        return
    from torch import nn

    from evf_sam.tokenizer import require_semantic_token

    emb = getattr(getattr(model, "encoder", None), "text_embed", None)
    require_semantic_token(tokenizer, emb.num_embeddings if isinstance(emb, nn.Embedding) else None)


@dataclass
class ValidationSets:
    """``data.val`` (``primary``, may be None) plus extra splits by name (``data.val_semantic``)."""

    primary: Any
    extra: dict[str, Any]


def build_train_dataset(cfg, model, tokenizer, *, with_sam_images: bool = True):
    from evf_sam.data.train_dataset import RandomTrainDataset, ReferTrainDataset

    dc = cfg.data
    common = dict(tokenizer=tokenizer, sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                  max_text_len=_max_text_len(cfg, model), seed=int(cfg.seed),
                  sentences_per_image=int(dc.sentences_per_image), with_sam_images=with_sam_images)
    if dc.kind == "random":
        return RandomTrainDataset(num_images=int(dc.num_images), encoder=str(cfg.model.encoder), **common)
    semantic = []
    specs = _semantic_specs(dc)
    if specs:
        from evf_sam.data.semantic import SemanticTrainSource

        _check_semantic_tokenizer(cfg, model, tokenizer)
        readers = _semantic_readers(dc, val=False)
        semantic = [SemanticTrainSource(readers[sp["name"]], name=sp["name"], rate=sp["rate"], index=i,
                                        classes_per_image=int(dc.get("classes_per_image", 3)),
                                        prefix=_semantic_prefix(dc), resize_mode=model.resize_mode)
                    for i, sp in enumerate(specs)]
    return ReferTrainDataset(dc.root, _sources(dc), encoder=str(cfg.model.encoder), semantic_sources=semantic,
                             resize_mode=model.resize_mode, **common)


def build_val_dataset(cfg, model):
    """The validation split (``data.val``), or None when ``data.val`` is null; with ``data.val_semantic``
    a `ValidationSets` (``data.val`` + the semantic split, e.g. ``ade20k|semantic|val``)."""
    vs = cfg.data.get("val_semantic") if cfg.data.kind == "refer" else None
    if vs is not None:
        from evf_sam.data.semantic import SemanticEvalDataset

        sem = SemanticEvalDataset(_semantic_readers(cfg.data)["val"], sam_size=model.sam_image_size,
                                  beit_size=model.beit_image_size, max_images=vs.get("max_images"),
                                  prefix=_val_semantic_prefix(cfg.data),
                                  ignore_unlabeled=bool(vs.get("ignore_unlabeled", True)),
                                  resize_mode=model.resize_mode)
        return ValidationSets(primary=_primary_val_dataset(cfg, model), extra={sem.name: sem})
    return _primary_val_dataset(cfg, model)


def _primary_val_dataset(cfg, model):
    vc = cfg.data.get("val")
    if vc is None:
        return None
    if cfg.data.kind == "random":  # held-out random samples (another seed), one expression each
        from evf_sam.data.train_dataset import RandomEvalDataset

        return RandomEvalDataset(sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                                 seed=int(cfg.seed) + 1, num_images=int(vc.get("num_images", 8)))
    from evf_sam.data.eval_dataset import build_eval_dataset

    return build_eval_dataset(cfg.data.root, str(vc.dataset), str(vc.split_by), str(vc.split),
                              sam_size=model.sam_image_size, beit_size=model.beit_image_size,
                              max_images=vc.get("max_images"), resize_mode=model.resize_mode)


@torch.no_grad()
def run_validation(cfg, model, tokenizer, val_dataset, *, device, dtype) -> dict[str, Any]:
    """cIoU / gIoU (+ whatever `evaluate` reports) of ``model`` on the validation split, on every rank.

    With `ValidationSets` the extra splits' metrics come under ``"extra_splits": {name: {...}}`` (each
    with ``miou`` for semantic splits); without ``data.val`` the first extra split is the main one.
    """
    if isinstance(val_dataset, ValidationSets):
        extra = {}
        for name, ds in val_dataset.extra.items():
            _check_semantic_tokenizer(cfg, model, tokenizer)
            vs = cfg.data.get("val_semantic") or {}
            m = _evaluate_split(cfg, model, tokenizer, ds, batch_size=int(vs.get("batch_size", 4)), device=device,
                                dtype=dtype)
            extra[name] = {"split": name, **m}
        if val_dataset.primary is None:
            first = next(iter(extra))
            return {**extra.pop(first), "extra_splits": extra}
        return {**run_validation(cfg, model, tokenizer, val_dataset.primary, device=device, dtype=dtype),
                "extra_splits": extra}
    vc = cfg.data.val
    return {"split": val_dataset.name, **_evaluate_split(cfg, model, tokenizer, val_dataset,
                                              batch_size=int(vc.get("batch_size", 4)), device=device, dtype=dtype)}


def _evaluate_split(cfg, model, tokenizer, dataset, *, batch_size: int, device, dtype) -> dict[str, Any]:
    from evf_sam.engine.evaluate import evaluate

    metrics = evaluate(model, tokenizer, dataset, batch_size=batch_size, device=device,
                       dtype=dtype, max_text_len=_max_text_len(cfg, model), progress=False)
    if not isinstance(metrics, dict):
        metrics = dict(vars(metrics))
    return {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}

"""The training loop: DeepSpeed steps over the step-indexed sampler, validation, checkpoints, export.

    trainer = build_trainer(cfg)        # evf_sam.engine.build: every part built from the config
    results = trainer.fit()             # resume -> steps -> final checkpoint, validation, export

One run directory (``cfg.run_dir``) holds everything::

    config.yaml, config_resolved.yaml   the Hydra config as composed / resolved
    train.log                           the console log of rank 0
    metrics.jsonl                       {"type": "train", "step", "loss", "bce", "dice", "lr", ...} per step,
                                        {"type": "val", "step", "split", "ciou", "giou", ...} per split and validation,
                                        {"type": "eval", ...} per trainer.eval_at_end split; all with "time", "elapsed_s"
    checkpoints/step_00001000/          DeepSpeed tag dir (+ trainer_state.json, rng_rank{r}.pt, complete)
    checkpoints/latest                  name of the newest complete tag (written last, atomically)
    best/, final/                       EvfSam.save_pretrained exports (+ tokenizer files)
    results.json                        final validation metrics ({"<split>": {...}, "best": {...}, ...})
    eval/                               trainer.eval_at_end: scripts/eval_refcoco.py's results of final/
    plots/curves.png                    loss, BCE, Dice, LR, validation cIoU (`plots.plot_run`), at the end of fit()

Resume (``resume=auto``, `checkpointing.Checkpointer`): the newest verified tag dir with a ``complete``
marker is loaded (model, optimizer, LR scheduler, step, best metric, per-rank RNG); the data order is a
function of (seed, step), so the run continues exactly where it stopped, and metrics.jsonl is rewound
to the records logged before that checkpoint (`RunLogger.rewind`): one train record per step.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from evf_sam.atomic import atomic_write_text
from evf_sam.data.batch import Batch
from evf_sam.engine import distributed as D
from evf_sam.engine.losses import MaskLosses, mask_losses, valid_mask
from evf_sam.engine.state import TrainState

__all__ = ["NonFiniteLossError", "StepResult", "Trainer"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class StepResult:
    """One optimizer step, averaged over its micro-batches and the ranks."""

    loss: float  # bce_weight * bce + dice_weight * dice (meaningless when nonfinite)
    bce: float
    dice: float
    nonfinite: bool  # a micro-batch on some rank had a NaN / inf loss: the step was poisoned and skipped
    applied: bool  # DeepSpeed applied the optimizer step (False also on a gradient overflow)
    images: int  # images in the step, all ranks
    expressions: int  # expressions in the step, all ranks

    @property
    def skipped(self) -> bool:
        return self.nonfinite or not self.applied


class Trainer:
    """Trains the built parts (all ranks construct one with the same arguments; `build.build_trainer`).

    config: the ``trainer`` group (steps, batch, validation / checkpoint cadence, loss weights, ...).
    engine / scheduler: ``deepspeed.initialize``'s engine and LR scheduler.
    val_splits: `data.build.ValidationSplit` list; the first one's ``config.best_metric`` picks ``best/``.
    embedding_cache: `EmbeddingCache` of the frozen SAM image encoder, or None (SAM runs every step).
    run_config: the resolved config, recorded in results.json.
    end_eval: ``trainer.eval_at_end``: evaluates ``final/`` after the last step (all ranks) and returns
    ``(output dir, {split: metrics})`` (`evaluate.run_eval_from_config`, as scripts/eval_refcoco.py), or None.
    """

    def __init__(self, config, *, engine, scheduler, tokenizer, tokenizer_dir: Path, train_dataset, num_workers: int,
                 val_splits: Sequence, embedding_cache, max_text_len: int, run_dir: Path, dist: D.DistInfo,
                 dtype: torch.dtype, checkpointer, run_logger, resume: str | None, seed: int, run_config: dict,
                 end_eval: Callable[[], tuple[Path, dict[str, dict]]] | None = None):
        self.config = config
        self.engine, self.scheduler = engine, scheduler
        self.module = engine.module
        self.tokenizer, self.tokenizer_dir = tokenizer, Path(tokenizer_dir)
        self.train_dataset, self.num_workers = train_dataset, int(num_workers)
        self.val_splits, self.embedding_cache = list(val_splits), embedding_cache
        self.max_text_len = int(max_text_len)
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, self.device = dist.rank, dist.world_size, dist.device
        self.dtype = dtype
        self.checkpointer, self.run_logger = checkpointer, run_logger
        self.resume, self.seed, self.run_config = resume, int(seed), run_config
        self.end_eval = end_eval
        self.micro_batch_size, self.grad_accum = int(config.micro_batch_size), int(config.grad_accum)
        self.total_steps = int(config.total_steps)
        self.state = TrainState()

    # -- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        self.state.elapsed_s = self.run_logger.elapsed()
        return self.checkpointer.save(self.engine, self.state)

    def maybe_resume(self) -> None:
        resumed = self.checkpointer.resume(self.engine, self.resume, seed=self.seed)
        if resumed is not None:
            self.state, path = resumed
            logger.info("resumed from %s at step %d (lr %.3g)", path, self.state.step, self.scheduler.get_last_lr()[0])

    # -- one step -------------------------------------------------------------------------------

    def _forward_loss(self, batch: Batch) -> tuple[MaskLosses, Batch]:
        batch = batch.to(self.device, dtype=self.dtype)
        embeddings = None
        if self.embedding_cache is not None:
            embeddings = self.embedding_cache.get(batch.image_keys, device=self.device, dtype=self.dtype)
        low_res, _ = self.engine(None if embeddings is not None else batch.sam_images, batch.beit_images,
                                 batch.text_ids, batch.text_padding_mask, batch.image_index,
                                 image_embeddings=embeddings)
        size = batch.gt_masks.shape[-1]
        weights = self.config.loss
        return mask_losses(low_res, batch.gt_masks, valid_mask(batch.input_sizes, batch.image_index, size),
                           bce_weight=float(weights.bce_weight), dice_weight=float(weights.dice_weight)), batch

    def _poison(self) -> torch.Tensor:
        """A loss whose gradients are NaN: DeepSpeed's overflow check then skips the optimizer step."""
        p = next(p for p in self.module.parameters() if p.requires_grad)
        return p.reshape(-1)[0].float() * float("nan")

    def train_step(self, micro_batches: list[Batch]) -> StepResult:
        sums = {"loss": 0.0, "bce": 0.0, "dice": 0.0}  # over the finite micro-batches of this rank
        images = expressions = 0
        nonfinite = False
        for batch in micro_batches:
            losses, batch = self._forward_loss(batch)
            if D.any_true(not bool(torch.isfinite(losses.total).item())):
                nonfinite = True
                loss = self._poison()
            else:
                loss = losses.total
                sums["loss"] += losses.total.item()
                sums["bce"] += losses.bce.item()
                sums["dice"] += losses.dice.item()
            self.engine.backward(loss)
            self.engine.step()
            images += batch.num_images
            expressions += batch.num_expressions
        applied = self.engine.was_step_applied() if hasattr(self.engine, "was_step_applied") else not nonfinite
        loss, bce, dice = D.all_reduce_mean([v / len(micro_batches) for v in sums.values()])
        mean_images, mean_expressions = D.all_reduce_mean([images, expressions])
        return StepResult(loss=loss, bce=bce, dice=dice, nonfinite=nonfinite, applied=bool(applied),
                          images=int(round(mean_images * self.world_size)),
                          expressions=int(round(mean_expressions * self.world_size)))

    # -- validation ------------------------------------------------------------------------------

    def validate(self) -> list[dict[str, Any]]:
        """Metrics of every validation split (`validation.validate`), the main split first."""
        from evf_sam.engine.validation import validate

        self.module.eval()
        try:
            return validate(self.module, self.tokenizer, self.val_splits, device=self.device, dtype=self.dtype,
                            max_text_len=self.max_text_len)
        finally:
            self._train_mode()

    def _train_mode(self) -> None:
        self.module.train()
        self.module.sam.image_encoder.eval()  # frozen: eval mode always
        for _, m in self.module.named_children():  # fully frozen top-level parts stay in eval mode
            if not any(p.requires_grad for p in m.parameters()):
                m.eval()

    def _validate_and_export(self) -> list[dict[str, Any]] | None:
        """Validates, logs a record per split, exports ``best/`` when the main split improved."""
        if not self.val_splits:
            return None
        results = self.validate()
        for metrics in results:
            self.run_logger.log({"type": "val", "step": self.state.step,
                                 **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
            logger.info("validation step %d on %s: %s", self.state.step, metrics["split"],
                        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        value = float(results[0][self.config.best_metric])
        if value > self.state.best_metric:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.export(self.run_dir / "best")
        return results

    def export(self, path: Path) -> Path:
        """``EvfSam.save_pretrained`` of the current weights (ZeRO-2 keeps full parameters on every rank)."""
        if self.rank == 0:
            self.module.save_pretrained(path, tokenizer_dir=self.tokenizer_dir)
            logger.info("exported %s", path)
        D.barrier()
        return path

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        from torch.utils.data import DataLoader

        from evf_sam.data.train_dataset import StepBatchSampler

        config = self.config
        self.maybe_resume()
        self.run_logger.rewind(self.state.step, final_step=self.total_steps)
        self.run_logger.start(elapsed_s=self.state.elapsed_s)
        self._train_mode()
        start = self.state.step
        stop = self.total_steps
        if config.max_steps_this_run is not None:
            stop = min(stop, start + int(config.max_steps_this_run))
        sampler = StepBatchSampler(micro_batch_size=self.micro_batch_size, grad_accum=self.grad_accum, rank=self.rank,
                                   world_size=self.world_size, total_steps=stop, start_step=start)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.train_dataset.collate,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=2 if self.num_workers > 0 else None)
        batches = iter(loader)
        bar = None
        if self.rank == 0 and config.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=start, desc="train", dynamic_ncols=True, file=sys.stdout)
        images_per_step = self.micro_batch_size * self.grad_accum * self.world_size
        logger.info("training steps %d -> %d of %d | micro-batch %d x accumulation %d x world %d = %d images/step",
                    start, stop, self.total_steps, self.micro_batch_size, self.grad_accum, self.world_size,
                    images_per_step)
        t_last, samples_last = time.perf_counter(), self.state.samples
        while self.state.step < stop:
            t0 = time.perf_counter()
            lr = float(self.scheduler.get_last_lr()[0])  # the LR this step uses
            step = self.train_step([next(batches) for _ in range(self.grad_accum)])
            dt = time.perf_counter() - t0
            self.state.step += 1
            self.state.samples += step.images
            self.state.expressions += step.expressions
            if step.skipped:
                self.state.skipped_steps += 1
                self.state.nonfinite_in_row += 1 if step.nonfinite else 0
                logger.warning("step %d: %s; optimizer step skipped (%d in a row)", self.state.step,
                               "non-finite loss" if step.nonfinite else "gradient overflow",
                               self.state.nonfinite_in_row)
                if self.state.nonfinite_in_row >= int(config.max_nonfinite_steps):
                    raise NonFiniteLossError(
                        f"{self.state.nonfinite_in_row} steps in a row had a NaN/inf loss (last at step "
                        f"{self.state.step}); stopping. Lower optim.lr, use trainer.precision=fp32 or bf16, or "
                        f"check the data (trainer.max_nonfinite_steps={config.max_nonfinite_steps}).")
            else:
                self.state.nonfinite_in_row = 0
            record = {"type": "train", "step": self.state.step, "loss": step.loss, "bce": step.bce, "dice": step.dice,
                      "lr": lr, "samples_per_s": step.images / dt, "step_time_s": dt, "skipped": step.skipped}
            if step.nonfinite:
                record.update(loss=None, bce=None, dice=None)
            self.run_logger.log(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss="skipped" if step.nonfinite else f"{step.loss:.4f}", sps=f"{step.images / dt:.1f}")
            if self.state.step % int(config.log_every) == 0 or self.state.step == stop:
                now = time.perf_counter()
                samples_per_s = (self.state.samples - samples_last) / max(now - t_last, 1e-9)
                t_last, samples_last = now, self.state.samples
                mem = ""
                if self.device.type == "cuda":
                    mem = f" | mem {torch.cuda.max_memory_allocated(self.device) / 2**30:.1f} GiB"
                logger.info("step %d/%d | %s | lr %.3g | %.1f samples/s%s", self.state.step, self.total_steps,
                            _loss_text(step), lr, samples_per_s, mem)
            if int(config.val_every) > 0 and self.state.step % int(config.val_every) == 0 \
                    and self.state.step < self.total_steps:
                self._validate_and_export()
            if int(config.ckpt_every) > 0 and self.state.step % int(config.ckpt_every) == 0 and self.state.step < stop:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        del batches, loader

        finished = self.state.step >= self.total_steps
        if int(config.ckpt_every) >= 0:
            self.save_checkpoint()
        results: dict[str, Any] = {"step": self.state.step, "finished": finished}
        if finished:
            validated = self._validate_and_export() if config.val_at_end else None
            final = self.export(self.run_dir / "final")
            results.update(final=str(final))
            for metrics in validated or []:
                results[metrics["split"]] = metrics
            if self.end_eval is not None:
                results["eval"] = str(self._evaluate_final())
            if self.rank == 0:
                best = {"step": self.state.best_step, config.best_metric: self.state.best_metric,
                        "path": str(self.run_dir / "best")} if self.state.best_step >= 0 else None
                from evf_sam.run_axes import axes_from_config

                results.update(best=best, checkpoint=str(final), samples=self.state.samples, config=self.run_config,
                               axes=axes_from_config(self.run_config))  # the row it lands on (make_table.py)
                atomic_write_text(self.run_dir / "results.json", json.dumps(results, indent=1))
        self.run_logger.finish()
        if self.rank == 0:
            self._plot()
        D.barrier()
        return results

    def _evaluate_final(self) -> Path:
        """``trainer.eval_at_end``: ``final/`` through the evaluation script's code; a record per split."""
        logger.info("evaluating %s on %s (trainer.eval_at_end)", self.run_dir / "final",
                    ", ".join(self.config.eval_at_end))
        out_dir, evaluated = self.end_eval()
        for split, metrics in evaluated.items():
            self.run_logger.log({"type": "eval", "step": self.state.step, "split": split,
                                 **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
        return out_dir

    def _plot(self) -> None:
        """plots/curves.png from metrics.jsonl; a failure is a warning (the run itself is done)."""
        try:
            from evf_sam.engine.plots import plot_run

            path = plot_run(self.run_dir).path
            logger.info("plots: %s", path)
        except Exception as e:  # matplotlib missing or broken: never fail a finished run over a figure
            logger.warning("plots not written: %s: %s", type(e).__name__, e)


def _loss_text(step: StepResult) -> str:
    """The console's loss part: the losses, or that the step was skipped (a NaN step has none)."""
    if step.nonfinite:
        return "skipped (non-finite loss)"
    text = f"loss {step.loss:.4f} (bce {step.bce:.4f}, dice {step.dice:.4f})"
    return text if step.applied else f"{text}, skipped (gradient overflow)"

"""The DeepSpeed config dict of a run, from the ``deepspeed`` group and the trainer's batch / precision.

    precision = resolve_precision("auto", device)             # "bf16" on CUDA with bf16, else "fp32"
    ds = build_deepspeed_config(typed(cfg.deepspeed), micro_batch_size=16, grad_accum=2, precision=precision)
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=ds)
"""

from __future__ import annotations

import torch

from evf_sam.config import DeepSpeedConfig

__all__ = ["build_deepspeed_config", "resolve_precision"]


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 on CUDA with bf16 support, else fp32; fp16 needs CUDA (DeepSpeed's loss scaling)."""
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"trainer.precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("trainer.precision=fp16 needs CUDA (DeepSpeed's fp16 loss scaling); use bf16 or fp32 on CPU")
    return precision


def build_deepspeed_config(ds: DeepSpeedConfig, *, micro_batch_size: int, grad_accum: int, precision: str) -> dict:
    """ZeRO settings, clipping and ``extra`` (merged in verbatim) from the ``deepspeed`` group; batch
    and precision from the trainer."""
    zero = {
        "stage": ds.stage,
        "overlap_comm": ds.overlap_comm,
        "contiguous_gradients": ds.contiguous_gradients,
        "reduce_scatter": ds.reduce_scatter,
        "reduce_bucket_size": int(ds.reduce_bucket_size),
        "allgather_bucket_size": int(ds.allgather_bucket_size),
    }
    config = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(grad_accum),
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    config.update(ds.extra)
    return config

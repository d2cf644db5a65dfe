"""Which parameters train (name globs), the optimizer and the LR schedule.

    report = apply_trainable(model, ["encoder.*", "projector.*", "sam.mask_decoder.*"])
    print(format_param_table(model))
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.0, betas=(0.9, 0.95))
    sched = build_scheduler(opt, total_steps=15000, warmup_steps=100)   # linear warm-up, linear decay to 0

A parameter trains iff its name (``model.named_parameters()``, our names) matches one of the globs
(`fnmatch`). ``sam.image_encoder.*`` never trains: the embedding cache and the no_grad image path
depend on it, so a glob that would unfreeze it raises.
"""

from __future__ import annotations

import fnmatch
import math
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = ["ALWAYS_FROZEN", "apply_trainable", "build_optimizer", "build_scheduler", "format_param_table",
           "param_counts", "trainable_names"]

ALWAYS_FROZEN = ("sam.image_encoder.*",)


def trainable_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the parameters matching any glob in ``patterns``."""
    return [n for n, _ in model.named_parameters() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def apply_trainable(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Sets ``requires_grad`` from the globs; returns the trainable names.

    Raises ValueError if a glob matches nothing (a typo would silently freeze a module) or if the
    globs would unfreeze an ``ALWAYS_FROZEN`` module.
    """
    patterns = list(patterns)
    if not patterns:
        raise ValueError("trainable: no glob given; nothing would train")
    names = [n for n, _ in model.named_parameters()]
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"trainable glob {p!r} matches no parameter (top-level modules: {', '.join(tops)})")
    chosen = set(trainable_names(model, patterns))
    bad = sorted(n for n in chosen if any(fnmatch.fnmatchcase(n, f) for f in ALWAYS_FROZEN))
    if bad:
        raise ValueError(f"trainable globs {patterns} unfreeze the SAM image encoder ({bad[0]}, ... {len(bad)} "
                         f"tensors); it stays frozen in EVF-SAM (no_grad path, embedding cache)")
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    return [n for n in names if n in chosen]


def param_counts(model: nn.Module, depth: int = 2) -> "OrderedDict[str, tuple[int, int]]":
    """{module prefix (first ``depth`` name parts): (trainable, frozen)} parameter counts."""
    out: OrderedDict[str, list[int]] = OrderedDict()
    for n, p in model.named_parameters():
        parts = n.split(".")
        key = ".".join(parts[:depth]) if parts[0] == "sam" else parts[0]  # sam.<part>, else top-level
        c = out.setdefault(key, [0, 0])
        c[0 if p.requires_grad else 1] += p.numel()
    return OrderedDict((k, (v[0], v[1])) for k, v in out.items())


def format_param_table(model: nn.Module) -> str:
    """A text table of trainable / frozen parameter counts per module (SAM split into its parts)."""
    rows = param_counts(model)
    tot_t = sum(t for t, _ in rows.values())
    tot_f = sum(f for _, f in rows.values())
    w = max(len("module"), *(len(k) for k in rows))
    lines = [f"{'module':<{w}}  {'trainable':>14}  {'frozen':>14}", "-" * (w + 32)]
    for k, (t, f) in rows.items():
        lines.append(f"{k:<{w}}  {t:>14,}  {f:>14,}")
    lines.append("-" * (w + 32))
    lines.append(f"{'total':<{w}}  {tot_t:>14,}  {tot_f:>14,}")
    return "\n".join(lines)


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.0,
                    betas: Iterable[float] = (0.9, 0.95), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases / norms / 1-d tensors without weight decay."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(n, p) else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("no trainable parameters")
    groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def build_scheduler(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0,
                    schedule: str = "linear", min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps``, then ``linear`` (LISA's WarmupDecayLR), ``cosine``
    or ``constant`` to ``min_lr_ratio`` x lr at ``total_steps``."""
    if schedule not in ("linear", "cosine", "constant"):
        raise ValueError(f"optim.schedule must be linear, cosine or constant, got {schedule!r}")
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, min(int(warmup_steps), total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        f = 1.0 - t if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
        return min_lr_ratio + (1.0 - min_lr_ratio) * f

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

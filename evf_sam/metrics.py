"""Referring-segmentation metrics: per-expression I / U, cIoU, gIoU, Pr@K, distributed reduction.

    m = RefMetrics()
    for pred, gt in ...:                       # (H, W) bool masks at the original image size
        m.update(pred, gt)                     # or m.update_many(preds, gts) with (N, H, W)
    m.add_images(1)
    print(m.compute())                         # {"ciou", "giou", "pr@0.5", ..., "pr@0.9", "n_expressions", "n_images"}

Definitions (official EVF-SAM / LISA evaluation):
    I = |pred AND gt|, U = |pred OR gt| per expression.
    cIoU = sum I / sum U over the split (1.0 if sum U == 0).
    gIoU = mean over expressions of I / U, an expression with U == 0 (both masks empty) counting 1.
    Pr@t = fraction of expressions with IoU > t (strictly greater), t in 0.5 ... 0.9. EVF-SAM and LISA
      report no Pr@K, and the referring-segmentation code bases differ: CRIS (engine.py) uses
      ``iou > thres``, LAVT (test.py, inherited from the TensorFlow RMI/RRN code) ``this_iou >= t``.
      We take the strict form; the two differ only for an IoU exactly equal to t (I * 10 == U * k
      in integers, e.g. an exact half overlap on a small mask). The U == 0 expressions have IoU 1
      and count as hits.

`ClassIoU` (semantic-segmentation splits, paper Tab. 6): per class c, IoU_c = ΣI / ΣU over the
expressions of class c in the split; mIoU is the mean over the classes that occur. Only classes
present in an image are queried (a text-prompted model is not asked for absent classes), so false
positives of absent classes do not count.

All state is int64 sums: I and U are pixel counts, and the per-expression IoUs are summed in fixed
point (units of 2^-32, error < 1e-9 per expression), so the sums are exact and associative: results
do not depend on the number of ranks, the batching or the order. `all_reduce` sums the state over
ranks when torch.distributed is initialised (each rank must have seen disjoint expressions).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["PR_THRESHOLDS", "ClassIoU", "RefMetrics", "intersection_union"]

PR_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
_IOU_SCALE = 2 ** 32  # fixed-point unit of the IoU sum


def _as_bool(x: Tensor | np.ndarray) -> Tensor:
    t = torch.as_tensor(x) if isinstance(x, np.ndarray) else x
    return t if t.dtype == torch.bool else t > 0.5 if t.is_floating_point() else t != 0


def intersection_union(pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """I and U per expression.

    pred, gt: (H, W) or (N, H, W) masks (bool, {0,1} ints, or floats thresholded at 0.5)
    -> I, U: () or (N,) int64
    """
    p = _as_bool(pred)
    g = _as_bool(gt).to(p.device)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    if p.dim() not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (N, H, W), got {tuple(p.shape)}")
    dims = (-2, -1)
    return (p & g).sum(dims, dtype=torch.int64), (p | g).sum(dims, dtype=torch.int64)


class RefMetrics:
    """Accumulator for one split; sums only, so ranks / batches can be merged in any order."""

    def __init__(self, thresholds: tuple[float, ...] = PR_THRESHOLDS):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.reset()

    def reset(self) -> None:
        self.inter = 0  # sum I (pixels)
        self.union = 0  # sum U (pixels)
        self.iou_fixed = 0  # sum of per-expression IoU (U == 0 -> 1), in units of 2^-32
        self.hits = [0] * len(self.thresholds)  # expressions with IoU > t
        self.n_expressions = 0
        self.n_images = 0

    def update_iu(self, inter: Tensor | np.ndarray | list, union: Tensor | np.ndarray | list) -> None:
        """Adds expressions given their I and U (any shape, one value per expression)."""
        i = torch.as_tensor(inter).flatten().cpu().round().to(torch.int64)
        u = torch.as_tensor(union).flatten().cpu().round().to(torch.int64)
        if i.shape != u.shape:
            raise ValueError(f"I {tuple(i.shape)} and U {tuple(u.shape)} differ in shape")
        if bool((i > u).any()) or bool((i < 0).any()):
            raise ValueError("need 0 <= I <= U for every expression")
        iou = torch.where(u > 0, i.double() / u.clamp_min(1).double(), torch.ones_like(u, dtype=torch.float64))
        self.inter += int(i.sum())
        self.union += int(u.sum())
        self.iou_fixed += int(torch.round(iou * _IOU_SCALE).to(torch.int64).sum())
        for k, t in enumerate(self.thresholds):
            self.hits[k] += int((iou > t).sum())
        self.n_expressions += int(i.numel())

    def update(self, pred: Tensor | np.ndarray, gt: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Adds one (H, W) or N (N, H, W) expressions; returns their I, U."""
        i, u = intersection_union(pred, gt)
        self.update_iu(i, u)
        return i, u

    update_many = update

    def add_images(self, n: int = 1) -> None:
        self.n_images += int(n)

    def state(self) -> Tensor:
        """(3 + len(thresholds) + 2,) int64: sum I, sum U, IoU sum (fixed point), hits, n_expressions, n_images."""
        return torch.tensor([self.inter, self.union, self.iou_fixed, *self.hits, self.n_expressions, self.n_images],
                            dtype=torch.int64)

    def load_state(self, state: Tensor) -> None:
        v = [int(x) for x in state.tolist()]
        self.inter, self.union, self.iou_fixed = v[:3]
        self.hits, self.n_expressions, self.n_images = v[3:-2], v[-2], v[-1]

    def merge(self, other: "RefMetrics") -> "RefMetrics":
        self.load_state(self.state() + other.state())
        return self

    def all_reduce(self, device: torch.device | str | None = None) -> "RefMetrics":
        """Sums the state over all ranks in place (no-op without an initialised process group).

        ``device``: where the reduction tensors live (CUDA for NCCL); default: CUDA if the backend is
        NCCL, else CPU.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        state = self.state().to(device)
        dist.all_reduce(state)
        self.load_state(state.cpu())
        return self

    def compute(self) -> dict[str, Any]:
        n = self.n_expressions
        out: dict[str, Any] = {
            "ciou": self.inter / self.union if self.union > 0 else 1.0 if n else 0.0,
            "giou": self.iou_fixed / _IOU_SCALE / n if n else 0.0,
        }
        for t, h in zip(self.thresholds, self.hits):
            out[f"pr@{t:g}"] = h / n if n else 0.0
        out["n_expressions"] = n
        out["n_images"] = self.n_images
        return out


class ClassIoU:
    """Per-class ΣI / ΣU over a split (int64 sums: exact, any rank count / order); mIoU over the
    classes with ΣU > 0 (every queried class has a non-empty ground truth, so: the classes that occur)."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.sums = torch.zeros(2, self.num_classes, dtype=torch.int64)  # [I; U] per class

    def update(self, class_ids: Sequence[int], inter: Tensor, union: Tensor) -> None:
        """One expression per entry: its class, I and U (pixel counts)."""
        c = torch.as_tensor(list(class_ids), dtype=torch.long)
        i = torch.as_tensor(inter).flatten().cpu().to(torch.int64)
        u = torch.as_tensor(union).flatten().cpu().to(torch.int64)
        if not (c.numel() == i.numel() == u.numel()):
            raise ValueError(f"{c.numel()} class ids for {i.numel()} I and {u.numel()} U values")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.num_classes):
            raise ValueError(f"class ids must be in [0, {self.num_classes}), got {c.tolist()}")
        self.sums[0].index_add_(0, c, i)
        self.sums[1].index_add_(0, c, u)

    def all_reduce(self, device: torch.device | str | None = None) -> "ClassIoU":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        s = self.sums.to(device)
        dist.all_reduce(s)
        self.sums = s.cpu()
        return self

    def per_class(self) -> dict[int, float]:
        """{class index: IoU} for the classes that occur."""
        inter, union = self.sums
        return {int(c): int(inter[c]) / int(union[c]) for c in torch.nonzero(union > 0).flatten().tolist()}

    def compute(self) -> dict[str, Any]:
        ious = self.per_class()
        return {"miou": sum(ious.values()) / len(ious) if ious else 0.0, "n_classes": len(ious)}

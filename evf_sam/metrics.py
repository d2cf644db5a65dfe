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

`GRefMetrics` (gRefCOCO splits, expressions with several or no targets) follows the gRefCOCO benchmark
(Liu, Ding, Jiang, "GRES: Generalized Referring Expression Segmentation", CVPR 2023; the evaluator of its
code, henghuiding/ReLA gres_model/evaluation/refer_evaluation.py). A prediction is *empty* when its
foreground area is at most ``empty_area`` x H x W (a fraction of the image; 0: not one pixel) and is
then scored as the empty mask. Per expression:
    no-target, predicted empty:     I = 0, U = 0, IoU = 1       (ReLA: TP, accum_IoU += 1, U += 0)
    no-target, predicted non-empty: I = 0, U = |pred|, IoU = 0  (ReLA: FN, U += union)
    target:                         I, U of pred vs the union of the targets, IoU = I / U, and
                                    IoU = 0 if U == 0 (ReLA ``this_iou = 0 if U == 0``), so an empty
                                    prediction scores 0 there.
    cIoU = ΣI / ΣU and gIoU = mean IoU over all expressions (both kinds).
    N-acc = no-target expressions predicted empty / no-target expressions,
    T-acc = target expressions predicted non-empty / target expressions (ReLA: TN / (TN + FP));
      None when the split has no expression of that kind (ReLA reports 0 for both then).
    Pr@t over the target expressions only (as ReLA), with our strict IoU > t.
ReLA decides "empty" with a separate no-target head; a mask-only model like EVF-SAM has only its
mask, hence the area rule.

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

__all__ = ["PR_THRESHOLDS", "ClassIoU", "GRefMetrics", "RefMetrics", "intersection_union", "is_empty_prediction"]

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


def is_empty_prediction(pred: Tensor, empty_area: float = 0.0) -> Tensor:
    """(N, H, W) bool masks -> (N,) bool: foreground area <= ``empty_area`` x H x W."""
    if not 0.0 <= float(empty_area) < 1.0:
        raise ValueError(f"empty_area is a fraction of the image area in [0, 1), got {empty_area}")
    h, w = pred.shape[-2:]
    return pred.flatten(-2).sum(-1, dtype=torch.int64) <= int(float(empty_area) * h * w)


class GRefMetrics(RefMetrics):
    """gRefCOCO accumulator (cIoU, gIoU, N-acc, T-acc, Pr@K over target expressions; see the module
    docstring). Integer sums like `RefMetrics`, so `merge` / `all_reduce` work the same.

    ``update(pred, gt, no_target)``: (N, H, W) masks and (N,) bools; ``gt`` of a no-target expression
    must be empty.
    """

    def __init__(self, thresholds: tuple[float, ...] = PR_THRESHOLDS, *, empty_area: float = 0.0):
        is_empty_prediction(torch.zeros(1, 1, 1, dtype=torch.bool), empty_area)  # validates the fraction
        self.empty_area = float(empty_area)
        super().__init__(thresholds)

    def reset(self) -> None:
        super().reset()
        self.n_no_target = 0  # no-target expressions
        self.n_acc_hits = 0  # ... predicted empty
        self.t_acc_hits = 0  # target expressions predicted non-empty

    def update(self, pred: Tensor | np.ndarray, gt: Tensor | np.ndarray,  # type: ignore[override]
               no_target: Sequence[bool] | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Adds N expressions; returns their I, U (as scored: an empty prediction counts as no pixel)."""
        p, g = _as_bool(pred), _as_bool(gt)
        if p.dim() == 2:
            p, g = p[None], g[None]
        g = g.to(p.device)
        if p.shape != g.shape or p.dim() != 3:
            raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} must both be (N, H, W)")
        nt = (torch.as_tensor(list(no_target) if not isinstance(no_target, Tensor) else no_target, dtype=torch.bool)
              if no_target is not None else torch.zeros(p.shape[0], dtype=torch.bool)).flatten().to(p.device)
        if nt.numel() != p.shape[0]:
            raise ValueError(f"{nt.numel()} no_target flags for {p.shape[0]} expressions")
        if bool(nt.any()) and bool(g[nt].any()):
            raise ValueError("a no-target expression has a non-empty ground-truth mask")
        empty = is_empty_prediction(p, self.empty_area)
        p = p & ~empty[:, None, None]  # an empty prediction is scored as the empty mask
        i, u = intersection_union(p, g)
        i, u, empty, nt = i.cpu(), u.cpu(), empty.cpu(), nt.cpu()
        iou = torch.where(u > 0, i.double() / u.clamp_min(1).double(), torch.zeros_like(u, dtype=torch.float64))
        iou = torch.where(nt, empty.double(), iou)  # no target: 1 if predicted empty, else 0
        self.inter += int(i.sum())
        self.union += int(u.sum())
        self.iou_fixed += int(torch.round(iou * _IOU_SCALE).to(torch.int64).sum())
        for k, t in enumerate(self.thresholds):
            self.hits[k] += int(((iou > t) & ~nt).sum())
        self.n_expressions += int(i.numel())
        self.n_no_target += int(nt.sum())
        self.n_acc_hits += int((nt & empty).sum())
        self.t_acc_hits += int((~nt & ~empty).sum())
        return i, u

    update_many = update

    def update_iu(self, inter, union) -> None:  # noqa: D102
        raise TypeError("GRefMetrics needs the masks (emptiness of the prediction): use update(pred, gt, no_target)")

    def state(self) -> Tensor:
        """`RefMetrics.state` + (n_no_target, N-acc hits, T-acc hits)."""
        return torch.cat([super().state(),
                          torch.tensor([self.n_no_target, self.n_acc_hits, self.t_acc_hits], dtype=torch.int64)])

    def load_state(self, state: Tensor) -> None:
        super().load_state(state[:-3])
        self.n_no_target, self.n_acc_hits, self.t_acc_hits = (int(x) for x in state[-3:].tolist())

    def compute(self) -> dict[str, Any]:
        n, n_nt = self.n_expressions, self.n_no_target
        n_t = n - n_nt
        out: dict[str, Any] = {
            "ciou": self.inter / self.union if self.union > 0 else 1.0 if n else 0.0,
            "giou": self.iou_fixed / _IOU_SCALE / n if n else 0.0,
        }
        for t, h in zip(self.thresholds, self.hits):
            out[f"pr@{t:g}"] = h / n_t if n_t else 0.0
        out["n_acc"] = self.n_acc_hits / n_nt if n_nt else None
        out["t_acc"] = self.t_acc_hits / n_t if n_t else None
        out["n_expressions"] = n
        out["n_no_target"] = n_nt
        out["n_images"] = self.n_images
        out["empty_area"] = self.empty_area
        return out

"""Metric values on hand-built masks (numbers worked out by hand), accumulation invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evf_sam.metrics import PR_THRESHOLDS, RefMetrics, intersection_union


def _masks():
    """Four 4x4 expressions; I, U counted by hand in the comments."""
    pred = torch.zeros(4, 4, 4, dtype=torch.bool)
    gt = torch.zeros(4, 4, 4, dtype=torch.bool)
    pred[0, :2, :2] = True            # 4 px
    gt[0, :2, :] = True               # 8 px -> I = 4, U = 8, IoU 0.5
    gt[1, 1:3, 1:3] = True            # empty prediction, gt 4 px -> I = 0, U = 4, IoU 0
    pred[2, 0, :3] = True             # empty gt, pred 3 px -> I = 0, U = 3, IoU 0
    #                                   expression 3: both empty -> I = 0, U = 0, IoU counted as 1
    return pred, gt


def test_intersection_union_by_hand():
    pred, gt = _masks()
    i, u = intersection_union(pred, gt)
    assert i.dtype == torch.int64 and u.dtype == torch.int64
    assert i.tolist() == [4, 0, 0, 0]
    assert u.tolist() == [8, 4, 3, 0]
    i1, u1 = intersection_union(pred[0].numpy(), gt[0].numpy().astype(np.uint8))  # numpy, (H, W)
    assert (int(i1), int(u1)) == (4, 8)
    with pytest.raises(ValueError, match="shape"):
        intersection_union(pred[:, :3], gt)


def test_metrics_by_hand():
    pred, gt = _masks()
    m = RefMetrics()
    m.update(pred, gt)
    m.add_images(2)
    r = m.compute()
    assert r["n_expressions"] == 4 and r["n_images"] == 2
    assert r["ciou"] == pytest.approx((4 + 0 + 0 + 0) / (8 + 4 + 3 + 0))      # 4 / 15
    assert r["giou"] == pytest.approx((0.5 + 0 + 0 + 1) / 4, abs=1e-9)        # 0.375
    # IoUs (0.5, 0, 0, 1): IoU > 0.5 strictly only for the both-empty expression (0.5 is not > 0.5)
    assert r["pr@0.5"] == pytest.approx(1 / 4)
    for t in PR_THRESHOLDS:
        assert r[f"pr@{t:g}"] == pytest.approx(1 / 4)


def test_pr_thresholds_by_hand():
    m = RefMetrics()
    # IoUs 0.55, 0.65, 0.75, 0.85, 0.95, 1.0
    m.update_iu([55, 65, 75, 85, 95, 7], [100, 100, 100, 100, 100, 7])
    r = m.compute()
    assert [r[f"pr@{t}"] for t in ("0.5", "0.6", "0.7", "0.8", "0.9")] == pytest.approx(
        [6 / 6, 5 / 6, 4 / 6, 3 / 6, 2 / 6])
    assert r["ciou"] == pytest.approx((55 + 65 + 75 + 85 + 95 + 7) / 507)
    assert r["giou"] == pytest.approx((0.55 + 0.65 + 0.75 + 0.85 + 0.95 + 1.0) / 6, abs=1e-9)


def test_empty_cases():
    m = RefMetrics()
    r = m.compute()
    assert r["n_expressions"] == 0 and r["n_images"] == 0
    m.update(torch.zeros(2, 3, 3, dtype=torch.bool), torch.zeros(2, 3, 3, dtype=torch.bool))
    r = m.compute()  # only both-empty expressions: perfect
    assert r["ciou"] == 1.0 and r["giou"] == 1.0 and r["pr@0.9"] == 1.0


def test_order_and_batching_invariance():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(13, 9, 11, generator=g) > 0.5
    gt = torch.rand(13, 9, 11, generator=g) > 0.6
    whole = RefMetrics()
    whole.update(pred, gt)
    parts = [RefMetrics(), RefMetrics(), RefMetrics()]
    perm = torch.randperm(13, generator=g)
    for k, idx in enumerate(perm.split(5)):
        parts[k].update(pred[idx], gt[idx])
    merged = RefMetrics()
    for p in reversed(parts):
        merged.merge(p)
    assert merged.compute() == whole.compute()  # exactly: integer state
    assert torch.equal(merged.state(), whole.state())


def test_all_reduce_without_process_group_is_noop():
    m = RefMetrics()
    m.update_iu([1, 2], [2, 4])
    before = m.state().clone()
    m.all_reduce()
    assert torch.equal(m.state(), before)

"""BCE + Dice (LISA's recipe) and the valid-region mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from evf_sam.engine.losses import dice_loss, mask_losses, sigmoid_ce_loss, valid_mask


def test_valid_mask_covers_the_resized_image_only():
    v = valid_mask(torch.tensor([[4, 6], [8, 8]]), torch.tensor([0, 1, 0]), 8)
    assert v.shape == (3, 8, 8)
    assert v[0, :4, :6].all() and not v[0, 4:].any() and not v[0, :, 6:].any()
    assert v[1].all()


def test_bce_matches_torch_and_ignores_padding():
    logits, gt = torch.randn(2, 8, 8), (torch.rand(2, 8, 8) > 0.5).float()
    assert torch.allclose(sigmoid_ce_loss(logits, gt), F.binary_cross_entropy_with_logits(
        logits, gt, reduction="none").flatten(1).mean(1))
    v = valid_mask(torch.tensor([[4, 4]]), torch.tensor([0, 0]), 8)
    garbage = logits.clone()
    garbage[:, 4:] = 100.0  # padding: must not matter
    assert torch.allclose(sigmoid_ce_loss(logits, gt, v), sigmoid_ce_loss(garbage, gt, v))
    ref = F.binary_cross_entropy_with_logits(logits[:, :4, :4], gt[:, :4, :4], reduction="none").flatten(1).mean(1)
    assert torch.allclose(sigmoid_ce_loss(logits, gt, v), ref, atol=1e-6)


def test_dice_perfect_and_disjoint():
    gt = torch.zeros(1, 16, 16)
    gt[0, 4:12, 4:12] = 1
    perfect = (gt * 2 - 1) * 50
    assert dice_loss(perfect, gt).item() < 1e-4
    assert dice_loss(-perfect, gt).item() > 0.999


def test_mask_losses_upsamples_and_weights():
    low = torch.randn(3, 1, 4, 4, requires_grad=True)
    gt = (torch.rand(3, 16, 16) > 0.5).float()
    out = mask_losses(low, gt, bce_weight=2.0, dice_weight=0.5)
    assert torch.allclose(out.total, 2.0 * out.bce + 0.5 * out.dice)
    out.total.backward()
    assert torch.isfinite(low.grad).all() and low.grad.abs().sum() > 0

"""Mask losses of EVF-SAM training (LISA's recipe): sigmoid cross-entropy + Dice.

    losses = mask_losses(low_res_logits, batch.gt_masks, valid, bce_weight=1.0, dice_weight=1.0)
    losses.total.backward()

Both terms are computed per expression and averaged over the N expressions of the micro-batch:

    bce_i  = mean over the valid pixels of BCEWithLogits(logit, gt)
    dice_i = 1 - (2 Σ σ(x)·y + eps) / (Σ σ(x) + Σ y + eps)        (sums over valid pixels, LISA's /1000 scale)

"Valid" pixels are those of the resized image inside the padded SAM frame (``input_sizes``): the
zero padding carries no label, like LISA, which crops to the original image before the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MaskLosses", "dice_loss", "mask_losses", "sigmoid_ce_loss", "upsample_logits", "valid_mask"]

DICE_SCALE = 1000.0  # LISA: inputs and targets divided by 1000 before the sums (numerics on big masks)
DICE_EPS = 1e-6


@dataclass
class MaskLosses:
    total: Tensor  # scalar: bce_weight * bce + dice_weight * dice
    bce: Tensor  # scalar, mean over expressions
    dice: Tensor  # scalar, mean over expressions


def upsample_logits(low_res: Tensor, size: int) -> Tensor:
    """(N, 1, 4h, 4w) low-res logits -> (N, S, S) float32, bilinear like ``Sam.postprocess_masks``."""
    return F.interpolate(low_res.float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def valid_mask(input_sizes: Tensor, image_index: Tensor, size: int) -> Tensor:
    """(B, 2) resized (h, w), (N,) image of each expression -> (N, S, S) bool, True inside the image."""
    hw = input_sizes.to(image_index.device)[image_index.long()]  # (N, 2)
    ar = torch.arange(size, device=image_index.device)
    rows = ar[None, :] < hw[:, 0:1]  # (N, S)
    cols = ar[None, :] < hw[:, 1:2]  # (N, S)
    return rows[:, :, None] & cols[:, None, :]  # (N, S, S)


def sigmoid_ce_loss(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """(N, H, W) logits, (N, H, W) {0, 1} targets (, (N, H, W) bool) -> (N,) mean BCE over valid pixels."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    if valid is None:
        return loss.flatten(1).mean(1)
    v = valid.float()
    return (loss * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1.0)


def dice_loss(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """(N, H, W) logits, (N, H, W) {0, 1} targets (, valid) -> (N,) Dice loss per mask (LISA's form)."""
    p = logits.float().sigmoid().flatten(1)
    t = targets.float().flatten(1)
    if valid is not None:
        v = valid.float().flatten(1)
        p, t = p * v, t * v
    num = 2 * (p / DICE_SCALE * t).sum(-1)
    den = (p / DICE_SCALE).sum(-1) + (t / DICE_SCALE).sum(-1)
    return 1 - (num + DICE_EPS) / (den + DICE_EPS)


def mask_losses(low_res: Tensor, gt_masks: Tensor, valid: Tensor | None = None, *, bce_weight: float = 1.0,
                dice_weight: float = 1.0) -> MaskLosses:
    """Low-res logits (N, 1, 4h, 4w) against GT masks (N, S, S) in the SAM input frame.

    The logits are upsampled to S x S first (float32). ``valid`` (N, S, S) bool restricts both terms
    to the resized image (see `valid_mask`); None uses every pixel.
    """
    n = gt_masks.shape[0]
    if low_res.shape[0] != n:
        raise ValueError(f"{low_res.shape[0]} predicted masks for {n} ground-truth masks")
    logits = upsample_logits(low_res, gt_masks.shape[-1])  # (N, S, S)
    bce = sigmoid_ce_loss(logits, gt_masks, valid).mean()
    dice = dice_loss(logits, gt_masks, valid).mean()
    return MaskLosses(total=bce_weight * bce + dice_weight * dice, bce=bce, dice=dice)

"""What every SAM backend's text-prompt decoder shares (`evf_sam.models.sam_backends`): pairing N
prompts with their images, and keeping the best of SAM's multimask outputs.

    src, = features_per_prompt(image_index, n, image_embeddings)        # (B, C, h, w) -> (N, C, h, w)
    masks, iou = best_of_multimask(masks[:, 1:], iou[:, 1:])            # (N, 3, H, W) -> (N, 1, H, W)

A training batch has B images and N >= B referring expressions (``image_index`` says whose image
each is); inference has one image and N prompts. Both are decoded in one mask-decoder call without
first copying an image embedding per prompt where a view will do.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["best_of_multimask", "features_per_prompt"]


def features_per_prompt(image_index: Tensor | None, num_prompts: int, *features: Tensor) -> tuple[Tensor, ...]:
    """The image features of each of N prompts: ``f[image_index]`` for every ``f`` in ``features``.

    Args:
        image_index: (N,) long in [0, B), the image of each prompt; None means N == B and prompt i
            goes with image i (the features are returned as they are).
        num_prompts: N.
        features: (B, ...) tensors of the same B images (SAM-2: the embedding and its two
            high-resolution maps).
    Returns:
        one (N, ...) tensor per feature: an expanded view for one image (no N copies before the
        decoder), ``index_select`` otherwise.
    Raises:
        ValueError naming the problem: N != B without an index, a mis-shaped or out-of-range index.
    """
    b, n = features[0].shape[0], num_prompts
    if image_index is None:
        if n != b:
            raise ValueError(f"image_index=None needs one prompt per image, got {n} prompts for {b} images")
        return features
    image_index = image_index.to(device=features[0].device, dtype=torch.long)
    if image_index.shape != (n,):
        raise ValueError(f"image_index must be ({n},), got {tuple(image_index.shape)}")
    if n and (int(image_index.min()) < 0 or int(image_index.max()) >= b):
        raise ValueError(f"image_index out of range for {b} images: {image_index.tolist()}")
    if b == 1:
        return tuple(f.expand(n, *f.shape[1:]) for f in features)  # views
    return tuple(f.index_select(0, image_index) for f in features)  # (N, ...)


def best_of_multimask(masks: Tensor, iou: Tensor) -> tuple[Tensor, Tensor]:
    """The multimask output with the highest predicted IoU, per prompt (the official EVF-SAM choice).

    masks: (N, K, H, W) low-res logits of SAM's K multimask outputs, iou: (N, K) their predicted IoU
    -> (N, 1, H, W), (N, 1)
    """
    best = iou.argmax(dim=1, keepdim=True)  # (N, 1)
    return torch.take_along_dim(masks, best[:, :, None, None], dim=1), torch.take_along_dim(iou, best, dim=1)

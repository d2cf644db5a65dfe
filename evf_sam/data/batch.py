"""The typed batch that flows from the data pipeline into the model and the losses."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

__all__ = ["Batch", "text_length"]


def text_length(requested: int | None, model_max: int) -> int:
    """Token length T of the prompts: ``requested`` (``data.max_text_len``) capped at the model's
    text position table; None / 0 = the model's."""
    return int(min(requested, model_max)) if requested else int(model_max)


@dataclass
class Batch:
    """A micro-batch of B images and N >= B referring expressions.

    Every expression points at one image through ``image_index``, so the frozen SAM image encoder
    runs once per image however many expressions the image has.
    """

    sam_images: Tensor  # (B, 3, S, S) float32, SAM-normalised and zero-padded bottom/right
    beit_images: Tensor  # (B, 3, 224, 224) float32, BEiT-3 input (gathered per expression by image_index)
    text_ids: Tensor  # (N, T) long, <s> ... </s> right-padded with <pad>
    text_padding_mask: Tensor  # (N, T) bool, True = padding
    image_index: Tensor  # (N,) long in [0, B): the image of each expression
    gt_masks: Tensor  # (N, S, S) float32 in {0, 1}, in the SAM input frame (resized + padded)
    input_sizes: Tensor  # (B, 2) long: (h, w) of the resized image before padding
    original_sizes: Tensor  # (B, 2) long: (H, W) of the original image
    image_ids: list[int]  # (B,) REFER image ids, keys of the embedding cache

    @property
    def num_images(self) -> int:
        return self.sam_images.shape[0]

    @property
    def num_expressions(self) -> int:
        return self.text_ids.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """Moves tensors to ``device``; floating image tensors are cast to ``dtype`` if given."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.to(device, non_blocking=True)
                if dtype is not None and f.name in ("sam_images", "beit_images"):
                    v = v.to(dtype)
            out[f.name] = v
        return Batch(**out)

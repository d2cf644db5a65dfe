"""The typed records that flow from the data pipeline into the model and the losses.

    sample = source.sample(rng, ...)          # TrainSample: one image, k expressions (every training source)
    batch = collate_samples([s0, s1], tokenizer, max_text_len, encoder="beit3_large")   # Batch: B images, N = Σk
    emb = cache.get(batch.image_keys)         # ImageKey per image: the embedding cache's key

Image keys name an image as ``(source, image id in that source)``: ``("coco", 391895)`` for every
RefCOCO / RefCOCO+ / RefCOCOg image (one COCO train2014 image, one key, whichever dataset drew it),
``("saiapr", 25)`` for RefCLEF, ``("ade20k/training", "ADE_train_00000001")`` for semantic images (file
stem), ``("random", 5)`` for `data.kind=random`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

__all__ = ["Batch", "ImageKey", "TrainSample", "collate_samples", "text_length"]


def text_length(requested: int | None, model_max: int) -> int:
    """Token length T of the prompts: ``requested`` (``data.max_text_len``) capped at the model's
    text position table; None / 0 = the model's."""
    return int(min(requested, model_max)) if requested else int(model_max)


class ImageKey(NamedTuple):
    """Which image: its source and its id there (hashable, ordered, a JSON ``[source, id]`` pair)."""

    source: str  # "coco" | "saiapr" | "<semantic dataset>/<split>" | "random"
    image_id: int | str  # COCO / saiapr image id, semantic image file stem, random image index


@dataclass
class TrainSample:
    """One training image with k >= 1 expressions and their masks, as every training source gives it."""

    sam_image: Tensor  # (3, S, S) float32, SAM-preprocessed; (3, 0, 0) when the embedding cache supplies SAM's side
    beit_image: Tensor  # (3, b, b) float32, BEiT-3 input
    sentences: list[str]  # (k,) expressions
    masks: Tensor  # (k, S, S) float32 in {0, 1}: each expression's target in the SAM input frame
    input_size: tuple[int, int]  # (h, w): the image's extent in the S x S frame (the loss's region)
    original_size: tuple[int, int]  # (H, W) of the image file
    image_key: ImageKey
    class_ids: list[int] | None = None  # (k,) class index of each expression (semantic sources only)

    @property
    def image_id(self) -> int | str:
        """The image's id in its source (``image_key.image_id``): e.g. the REFER / COCO image id."""
        return self.image_key.image_id


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
    image_keys: list[ImageKey]  # (B,) keys of the embedding cache

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


def collate_samples(samples: Sequence[TrainSample], tokenizer, max_text_len: int,
                    encoder: str = "beit3_large") -> Batch:
    """Samples (one image, k sentences + masks each) -> `Batch` (B images, N = Σk expressions); the
    sentences are tokenised for ``encoder`` (`models.encoders.tokenize_for_encoder`) to ``max_text_len``."""
    from evf_sam.models.encoders import tokenize_for_encoder

    sentences, index = [], []
    for b, s in enumerate(samples):
        sentences += s.sentences
        index += [b] * len(s.sentences)
    ids, pad = tokenize_for_encoder(encoder, tokenizer, sentences, max_text_len)
    return Batch(
        sam_images=torch.stack([s.sam_image for s in samples]),
        beit_images=torch.stack([s.beit_image for s in samples]),
        text_ids=ids,
        text_padding_mask=pad,
        image_index=torch.tensor(index, dtype=torch.long),
        gt_masks=torch.cat([s.masks for s in samples]).float(),
        input_sizes=torch.tensor([s.input_size for s in samples], dtype=torch.long),
        original_sizes=torch.tensor([s.original_size for s in samples], dtype=torch.long),
        image_keys=[s.image_key for s in samples],
    )

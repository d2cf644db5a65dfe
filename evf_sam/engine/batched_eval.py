"""Evaluation at throughput: several images per SAM image-encoder forward, the next batch read and
preprocessed by DataLoader workers while this one runs on the model.

    loader = eval_loader(shard, batch_size=4, num_workers=2, pin_memory=device.type == "cuda")
    for batch in loader:                                   # EvalBatch
        low_res = predict_batch(model, tokenizer, batch, device=device, dtype=torch.float32, max_len=max_len)
        # [B] tensors (n_i, 1, 4h, 4w): image i's expressions, in batch.items[i].sentences order

Per batch of B images: ONE ``encode_image`` over (B, 3, S, S) (the SAM encoder is ~all the cost of
evaluation), then every expression of the B images through ``encode_prompts`` and ``decode_masks``
as one batch (``image_index`` maps expressions to images). The workers stack the B images into one
tensor (`collate_eval_items`), so the main process only moves it to the device (pinned +
non-blocking on CUDA); with ``num_workers >= 1`` they read and preprocess the following
``prefetch_factor`` batches meanwhile.

Batch size B vs 1: the same arithmetic on the same inputs, except that the GEMMs run over B images at
once and the text ids are padded to the longest expression of the batch (instead of the image) —
BEiT-3 masks padded keys, so only float rounding differs. Measured on the tiny test model (fp32, CPU,
tests/test_eval_batching.py, batches of 2, 3 and 5): low-res mask logits within 1.2e-7 of batch 1
(the test asserts 1e-5) and identical masks, hence identical intersection / union counts and metrics. Exactly bit-identical results (e.g.
across world sizes) need ``batch_size=1``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from evf_sam.models.encoders import tokenize_for_encoder

__all__ = ["EvalBatch", "collate_eval_items", "eval_loader", "predict_batch"]


@dataclass
class EvalBatch:
    """B evaluation items with their images stacked.

    sam_images: (B, 3, S, S) float32, SAM-normalised (+ padded)
    beit_images: (B, 3, b, b) float32
    items: the dataset's B items (`EvalItem` / `SemanticEvalItem`) with ``sam_image`` / ``beit_image``
        set to None (they live in the stacked tensors; not sent twice between processes)
    """

    sam_images: Tensor
    beit_images: Tensor
    items: list[Any]

    def __len__(self) -> int:
        return len(self.items)

    def pin_memory(self) -> "EvalBatch":
        """Called by ``DataLoader(pin_memory=True)`` in its pinning thread (CUDA)."""
        return EvalBatch(self.sam_images.pin_memory(), self.beit_images.pin_memory(), self.items)


def collate_eval_items(items: Sequence[Any]) -> EvalBatch:
    """[B] items -> `EvalBatch` (runs in the DataLoader workers)."""
    if not items:
        raise ValueError("collate_eval_items: empty batch")
    sam = torch.stack([it.sam_image for it in items])  # (B, 3, S, S)
    beit = torch.stack([it.beit_image for it in items])  # (B, 3, b, b)
    return EvalBatch(sam, beit, [dataclasses.replace(it, sam_image=None, beit_image=None) for it in items])


def eval_loader(dataset: Dataset, *, batch_size: int = 1, num_workers: int = 0, prefetch_factor: int = 2,
                pin_memory: bool = False) -> DataLoader:
    """In-order batches of ``batch_size`` images (the last may be smaller) as `EvalBatch`.

    num_workers >= 1: image decoding and preprocessing of the next ``prefetch_factor`` batches per
    worker overlap the model's forward. pin_memory: page-locked batches for non-blocking copies (CUDA).
    """
    if int(batch_size) < 1:
        raise ValueError(f"evaluation batch_size must be >= 1 (images per SAM encoder forward), got {batch_size}")
    if int(num_workers) < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    extra = {"prefetch_factor": int(prefetch_factor)} if int(num_workers) > 0 else {}
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, num_workers=int(num_workers),
                      collate_fn=collate_eval_items, pin_memory=bool(pin_memory), **extra)


def predict_batch(model, tokenizer, batch: EvalBatch, *, device: torch.device | str, dtype: torch.dtype,
                  max_len: int) -> list[Tensor]:
    """Low-res mask logits of every expression of ``batch``, grouped per image.

    model: an `EvfSam` on ``device``; dtype: what the images are cast to (the model's dtype).
    Returns [B] tensors (n_i, 1, 4h, 4w) (before `EvfSam.postprocess_masks`), in the model's output dtype.
    Autocast, if any, is the caller's.
    """
    device = torch.device(device)
    counts = [len(it.sentences) for it in batch.items]
    sentences = [s for it in batch.items for s in it.sentences]
    sam = batch.sam_images.to(device, dtype, non_blocking=True)  # (B, 3, S, S)
    beit = batch.beit_images.to(device, dtype, non_blocking=True)  # (B, 3, b, b)
    image_index = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(device)  # (N,)
    ids, pad = tokenize_for_encoder(str(model.config.encoder), tokenizer, sentences, max_len)  # (N, T)
    emb = model.encode_image(sam)  # (B, C, h, w): the one encoder forward of the batch
    prompts = model.encode_prompts(beit.index_select(0, image_index), ids.to(device), pad.to(device))  # (N, 1, C)
    low_res, _ = model.decode_masks(emb, prompts, image_index)  # (N, 1, 4h, 4w)
    return list(low_res.split(counts))

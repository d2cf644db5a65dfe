"""Text-prompted segmentation of one image with many prompts: encode the image once, then run all
prompts through BEiT-3 and SAM's mask decoder as one batch.

    predictor = EvfSamPredictor.from_pretrained("evf-sam", dtype=torch.bfloat16, device="cuda")
    predictor.set_image("dog.jpg")                      # SAM image embedding, once
    pred = predictor.predict(["the dog on the left", "the red ball"])
    pred.masks        # (2, H, W) bool, original image size
    pred.logits       # (2, H, W) float32 (masks == logits > 0)
    pred.scores       # (2,) float32: SAM's predicted IoU of each mask

Equivalent to the official EVF-SAM inference.py run once per prompt (same preprocessing -- its
``sam_preprocess``, i.e. `sam_preprocess(..., pipeline="inference")` --, prompt wiring and
post-processing), up to floating-point reordering from batching (tests/test_official_parity.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from evf_sam.models.evf_sam import EvfSam
from evf_sam.preprocess import beit3_preprocess, load_image, sam_preprocess

__all__ = ["EvfSamPredictor", "Prediction"]


@dataclass
class Prediction:
    """Masks for N prompts on one image, at the image's original size (H, W), on CPU."""

    masks: Tensor  # (N, H, W) bool = logits > 0
    logits: Tensor  # (N, H, W) float32 mask logits
    scores: Tensor  # (N,) float32: predicted IoU of each mask
    prompts: list[str]  # (N,) the prompts as used (stripped)

    def __len__(self) -> int:
        return len(self.prompts)


class EvfSamPredictor:
    """Holds an `EvfSam`, its tokenizer and the current image's SAM embedding.

    Args:
        model: an `EvfSam` in any dtype (float32 / bfloat16 / float16) on any device; inputs are
            cast to the model's dtype and device, outputs are float32 on CPU.
        tokenizer: a tokenizer object, a directory to load it from (the checkpoint directory holds
            the official tokenizer files), or None to use the directory the model was loaded from
            (``model.source_dir`` / ``model.name_or_path`` if the model carries one) and, for
            CLIP / ViLT ablation encoders, ``model.config.encoder_path``. `from_pretrained` loads
            both from one directory.
    """

    def __init__(self, model: EvfSam, tokenizer: Any = None) -> None:
        self.model = model.eval()
        self.tokenizer = _resolve_tokenizer(model, tokenizer)
        self.reset_image()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "EvfSamPredictor":
        """Model (`EvfSam.from_pretrained`) and tokenizer from one checkpoint directory or hub id."""
        from evf_sam.hub import resolve_checkpoint

        path = resolve_checkpoint(path)
        model = EvfSam.from_pretrained(path, dtype=dtype, device=device)
        return cls(model, tokenizer=path)

    # -- image -------------------------------------------------------------------------------

    def reset_image(self) -> None:
        self._embedding: Tensor | None = None  # (1, C, h, w) in the model's dtype
        self._beit_image: Tensor | None = None  # (1, 3, 224, 224)
        self.input_size: tuple[int, int] | None = None  # resized (h, w) before padding
        self.original_size: tuple[int, int] | None = None  # (H, W)
        self._failed_image: str | None = None  # set_image's input while it runs / after it failed

    @property
    def is_image_set(self) -> bool:
        return self._embedding is not None

    @torch.inference_mode()
    def set_image(self, image: str | Path | np.ndarray | Any) -> None:
        """Reads the image (path / PIL / array, see `load_image`), computes its SAM image
        embedding (at ``model.sam_image_size``) and its BEiT-3 input (at ``model.beit_image_size``)."""
        m = self.model
        # Forget the previous image first: if anything below fails, predict() raises instead of
        # silently segmenting the previous image.
        self.reset_image()
        self._failed_image = _describe(image)
        rgb = load_image(image)
        # official inference.py's preprocessing (square mode: the uint8 image interpolated to S x S)
        sam_x, input_size = sam_preprocess(rgb, m.sam_image_size, m.resize_mode, pipeline="inference")  # (3, S, S)
        beit_x = beit3_preprocess(rgb, m.beit_image_size)  # (3, 224, 224)
        embedding = m.encode_image(sam_x[None].to(device=m.device, dtype=m.dtype))  # (1, C, h, w) (SAM-2: tuple)
        beit_image = beit_x[None].to(device=m.device, dtype=m.dtype)
        # only now, with everything computed, does the predictor hold the new image
        self._embedding, self._beit_image = embedding, beit_image
        self.input_size = input_size
        self.original_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        self._failed_image = None

    # -- prompts -----------------------------------------------------------------------------

    @torch.inference_mode()
    def predict(self, prompts: str | Sequence[str], multimask_output: bool | None = None) -> Prediction:
        """Masks for every prompt on the current image, in one batch.

        Prompts are stripped of surrounding whitespace and otherwise used as given: the official
        EVF-SAM inference does not lower-case them (its evaluation script does; lower-case them
        yourself to match it). A prompt with no visible character (empty, whitespace, only
        zero-width characters such as U+200B) raises `evf_sam.prompts.EmptyPromptError` (a ValueError).

        multimask_output: None = ``model.config.multimask_output`` (False for the official SAM-1
            models); True keeps the best of SAM's 3 masks by predicted IoU.
        """
        if not self.is_image_set:
            if self._failed_image is not None:
                raise RuntimeError(f"no image set: the last set_image({self._failed_image}) failed, and the image "
                                   f"before it was cleared; call set_image with a readable image before predict")
            raise RuntimeError("no image set: call predictor.set_image(image) before predict(prompts)")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = [p.strip() if isinstance(p, str) else p for p in prompts]
        if not prompts:
            raise ValueError("predict needs at least one prompt")
        from evf_sam.prompts import check_prompt

        prompts = [check_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        m = self.model
        ids, pad = _tokenize(m, self.tokenizer, prompts)  # (N, T), (N, T)
        n = len(prompts)
        ids, pad = ids.to(m.device), pad.to(m.device)
        beit = self._beit_image.expand(n, -1, -1, -1)  # (N, 3, 224, 224) view
        prompt_emb = m.encode_prompts(beit, ids, pad)  # (N, 1, C)
        image_index = torch.zeros(n, dtype=torch.long, device=m.device)
        low_res, iou = m.decode_masks(self._embedding, prompt_emb, image_index, multimask_output)  # (N,1,4h,4w), (N,1)
        # Upsample in float32 (the official code stays in the model dtype; float32 only removes rounding).
        logits = m.postprocess_masks(low_res.float(), self.input_size, self.original_size)  # (N, 1, H, W)
        logits = logits[:, 0].float().cpu()  # (N, H, W)
        return Prediction(masks=logits > 0, logits=logits, scores=iou[:, 0].float().cpu(), prompts=list(prompts))

    def __call__(self, image, prompts: str | Sequence[str], multimask_output: bool | None = None) -> Prediction:
        """set_image(image) + predict(prompts)."""
        self.set_image(image)
        return self.predict(prompts, multimask_output)


def _describe(image: Any) -> str:
    """Short name of a set_image input for messages."""
    if isinstance(image, (str, Path)):
        return repr(str(image))
    shape = getattr(image, "shape", None) or getattr(image, "size", None)
    return f"<{type(image).__name__} {tuple(shape) if shape is not None else ''}>".replace(" >", ">")


def _encoder_name(model: EvfSam) -> str:
    return getattr(getattr(model, "config", None), "encoder", "beit3_large")


def _resolve_tokenizer(model: EvfSam, tokenizer: Any):
    if tokenizer is None:
        for attr in ("source_dir", "name_or_path", "path"):
            if getattr(model, attr, None):
                tokenizer = getattr(model, attr)
                break
        else:
            from evf_sam.models.encoders import encoder_kind

            enc_path = getattr(model.config, "encoder_path", None)
            if enc_path and encoder_kind(_encoder_name(model)) != "beit3":
                tokenizer = enc_path
    if tokenizer is None:
        raise ValueError("EvfSamPredictor needs a tokenizer: pass tokenizer=<checkpoint dir> (the directory "
                         "with sentencepiece.bpe.model) or a loaded tokenizer, or use "
                         "EvfSamPredictor.from_pretrained(dir)")
    if isinstance(tokenizer, (str, Path)):
        from evf_sam.models.encoders import load_encoder_tokenizer

        return load_encoder_tokenizer(_encoder_name(model), tokenizer)
    return tokenizer


def _tokenize(model: EvfSam, tokenizer, prompts: list[str]) -> tuple[Tensor, Tensor]:
    from evf_sam.models.encoders import tokenize_for_encoder

    return tokenize_for_encoder(_encoder_name(model), tokenizer, prompts, model.max_text_len)

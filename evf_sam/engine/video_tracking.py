"""Fine-tuning EVF-SAM2's SAM-2 memory path on text-prompted clips (what image-level training never
reaches: memory attention, memory encoder, object pointers, the object-score head).

    clips = [moving_shapes_clip(seed=i) for i in range(64)]            # or your own VideoClip-likes
    history = train_video_tracking(model, tokenizer, clips, steps=300, batch_size=8, lr=1e-3)
    model.save_pretrained("out/evf-sam2-tracking", tokenizer_dir)      # then EvfSam2VideoPredictor

A clip is T frames (H, W, 3) uint8, the target's masks (T, H, W) bool and one expression. One training
step runs B clips as SAM-2 tracks B objects (batched), the way `evf_sam.video.EvfSam2VideoPredictor`
runs them at inference, through the same ``SAM2Base`` code:

* frame 0 is the initial conditioning frame, prompted by the text only: BEiT-3 on (frame 0 at the
  BEiT-3 size, antialiased like ``inference_video.py``; the expression) -> projector -> the sparse
  prompt appended to SAM-2's empty one, dense = ``no_mask_embed`` (the prompt encoder of
  `evf_sam.video`, i.e. ``add_new_text``), ``no_mem_embed`` added, multimask output (0 points);
* frames 1..T-1 go through ``SAM2Base._track_step`` with no prompt: memory attention over the memories
  of frame 0 (conditioning) and the previous frames, plus their object pointers; every frame's
  prediction is encoded into memory by ``_encode_memory_in_output`` (sigmoid of the logits in training
  mode, as SAM-2 trains). This is the structure of Meta's ``training/model/sam2.py``
  (``SAM2Train.forward_tracking``: ``_track_step`` then ``_encode_memory_in_output`` per frame, a
  growing ``output_dict``), without its point / mask prompt sampling;
* gradients flow through the whole clip (memories and pointers are not detached), so frame t's loss
  trains the memory encoder on frames < t and, through frame 0, BEiT-3 and the projector.

Loss per frame, averaged over frames and clips (weights in `VideoLossWeights`): sigmoid BCE + Dice
(`evf_sam.engine.losses`) on each of the mask decoder's 3 multimask outputs (all trained to the
target, so the one the IoU head picks at inference is right; Meta's loss trains only the best one
and relies on the IoU head, which needs far more steps than a test affords), MSE of the predicted
IoUs against the actual IoUs (Meta's ``iou`` term), and BCE of the object-score logit against
"present" (every training frame shows the target; Meta's ``class`` term). The mask terms read the
mask decoder's output before SAM-2 replaces "no object" frames by a constant (-1024), so a frame the
untrained object-score head calls empty still trains the mask; the memory sees the gated masks, as
at inference. Masks are compared at the low-res grid (S/4, 64 px for the 256 px toy SAM-2); clips
of another size have their masks resized (nearest) to it.

The frozen SAM-2 image encoder (Hiera + FPN) runs once per clip (`encode_clip_frames`, cached);
``conv_s0`` / ``conv_s1`` (mask decoder) run in every step, so they train.
"""

from __future__ import annotations

import logging
import math
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from evf_sam.engine.losses import dice_loss, sigmoid_ce_loss
from evf_sam.engine.optim import apply_trainable, build_optimizer, build_scheduler
from evf_sam.metrics import intersection_union

__all__ = ["VIDEO_TRAINABLE", "ClipFeatures", "VideoLossWeights", "encode_clip_frames", "track_clips",
           "train_video_tracking", "video_tracking_loss"]

log = logging.getLogger(__name__)

# Everything but the frozen image encoder: BEiT-3 + projector (the frame-0 prompt) and SAM-2's heads,
# memory and pointer modules.
VIDEO_TRAINABLE = ("encoder.*", "projector.*", "sam.sam_mask_decoder.*", "sam.sam_prompt_encoder.*",
                   "sam.memory_attention.*", "sam.memory_encoder.*", "sam.maskmem_tpos_enc", "sam.no_mem_embed",
                   "sam.no_mem_pos_enc", "sam.no_obj_ptr", "sam.obj_ptr_proj.*")


class VideoClip(Protocol):
    frames: Sequence[np.ndarray]  # T arrays (H, W, 3) uint8
    masks: np.ndarray  # (T, H, W) bool
    expression: str


@dataclass
class ClipFeatures:
    """The frozen image encoder's output for one clip (T frames), detached."""

    fpn: list[Tensor]  # levels of (T, C, h_l, w_l), before conv_s0 / conv_s1
    pos: list[Tensor]  # their position encodings, same shapes
    beit: Tensor  # (3, b, b): frame 0 at the BEiT-3 input size
    masks: Tensor  # (T, 4h, 4w) float {0, 1}: the target at the low-res mask grid
    expression: str


@dataclass(frozen=True)
class VideoLossWeights:
    bce: float = 1.0
    dice: float = 1.0
    iou: float = 1.0
    obj_score: float = 1.0


def _sam2(model) -> Any:
    sam = model.sam
    if not hasattr(sam, "memory_attention") or not hasattr(sam, "_track_step"):
        raise ValueError(f"video tracking trains an EVF-SAM2 model (SAM-2 backend); this model's SAM is "
                         f"{type(sam).__name__}")
    return sam


@torch.no_grad()
def encode_clip_frames(model, clip: VideoClip) -> ClipFeatures:
    """Runs the frozen image encoder on a clip's frames (SAM-2's video input, `sam2_frame_preprocess`)
    and prepares frame 0's BEiT-3 input."""
    from evf_sam.preprocess import beit3_preprocess
    from evf_sam.video import _check_frames, sam2_frame_preprocess

    sam = _sam2(model)
    frames = _check_frames(list(clip.frames))
    masks = np.asarray(clip.masks)
    if masks.shape != (len(frames), *frames[0].shape[:2]):
        raise ValueError(f"clip masks are {masks.shape}, expected (T, H, W) = {(len(frames), *frames[0].shape[:2])}")
    dev, dtype = model.device, model.dtype
    images = torch.stack([sam2_frame_preprocess(f, sam.image_size) for f in frames]).to(dev, dtype)
    out = sam.image_encoder(images)
    grid = 4 * sam.image_embedding_size[0]
    low = F.interpolate(torch.from_numpy(masks)[:, None].float(), size=(grid, grid), mode="nearest")[:, 0]
    beit = beit3_preprocess(frames[0], model.beit_image_size, antialias=True)
    return ClipFeatures(fpn=[x.detach() for x in out["backbone_fpn"]], pos=[x.detach() for x in out["vision_pos_enc"]],
                        beit=beit.to(dev, dtype), masks=low.to(dev), expression=str(clip.expression))


@contextmanager
def _text_prompt(sam, text: Tensor) -> Iterator[None]:
    """SAM-2's prompt encoder takes ``text`` (B, 1, C) as the prompt inside the block (the class the
    video predictor uses for ``add_new_text``), then is restored."""
    from evf_sam.video import _text_prompt_encoder_class

    pe = sam.sam_prompt_encoder
    cls = pe.__class__
    pe.__class__ = _text_prompt_encoder_class()
    pe.text_embeds = text
    try:
        yield
    finally:
        pe.__class__ = cls
        del pe.text_embeds


def _stack_frame(feats: Sequence[ClipFeatures], t: int) -> tuple[list[Tensor], list[Tensor]]:
    fpn = [torch.stack([f.fpn[level][t] for f in feats]) for level in range(len(feats[0].fpn))]
    pos = [torch.stack([f.pos[level][t] for f in feats]) for level in range(len(feats[0].pos))]
    return fpn, pos


def track_clips(model, feats: Sequence[ClipFeatures], text_ids: Tensor, text_padding_mask: Tensor
                ) -> list[dict[str, Tensor]]:
    """B clips (same T) tracked as B objects from their text prompts on frame 0 (module docstring).

    text_ids / text_padding_mask: (B, L) the clips' expressions (`evf_sam.predictor._tokenize`).

    -> per frame t: {"multimasks": (B, 3, 4h, 4w) mask-decoder logits (before "no object" gating),
    "ious": (B, 3) predicted IoUs, "obj_score": (B, 1) object-score logits, "pred_masks": (B, 1, 4h, 4w)
    the selected, gated mask (what inference outputs)}.
    """
    sam = _sam2(model)
    n_frames = feats[0].masks.shape[0]
    if any(f.masks.shape[0] != n_frames for f in feats):
        raise ValueError("clips of one batch must have the same number of frames")
    text = model.encode_prompts(torch.stack([f.beit for f in feats]), text_ids.to(model.device),
                                text_padding_mask.to(model.device))  # (B, 1, C)
    decoded: list[tuple] = []
    hook = sam.sam_mask_decoder.register_forward_hook(lambda mod, args, out: decoded.append(out))
    output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    results = []
    try:
        for t in range(n_frames):
            fpn, pos = _stack_frame(feats, t)
            fpn[0] = sam.sam_mask_decoder.conv_s0(fpn[0])  # forward_image's high-res projections
            fpn[1] = sam.sam_mask_decoder.conv_s1(fpn[1])
            _, vision_feats, vision_pos, sizes = sam._prepare_backbone_features(
                {"backbone_fpn": fpn, "vision_pos_enc": pos})
            decoded.clear()
            with _text_prompt(sam, text) if t == 0 else nullcontext():
                current, sam_out, _, _ = sam._track_step(
                    frame_idx=t, is_init_cond_frame=t == 0, current_vision_feats=vision_feats,
                    current_vision_pos_embeds=vision_pos, feat_sizes=sizes, point_inputs=None, mask_inputs=None,
                    output_dict=output_dict, num_frames=n_frames, track_in_reverse=False,
                    prev_sam_mask_logits=None)
            _, _, ious, low_res, high_res, obj_ptr, obj_score = sam_out
            current.update(pred_masks=low_res, pred_masks_high_res=high_res, obj_ptr=obj_ptr)
            sam._encode_memory_in_output(vision_feats, sizes, None, True, high_res, obj_score, current)
            output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = current
            (raw_masks, *_), = decoded
            results.append({"multimasks": raw_masks.float(), "ious": ious.float(), "obj_score": obj_score.float(),
                            "pred_masks": low_res})
    finally:
        hook.remove()
    return results


def video_tracking_loss(outputs: Sequence[dict[str, Tensor]], gt_masks: Tensor,
                        weights: VideoLossWeights = VideoLossWeights()) -> dict[str, Tensor]:
    """`track_clips`' outputs against the targets (B, T, 4h, 4w) {0, 1} -> {"total", "bce", "dice", "iou",
    "obj_score"} scalars (module docstring)."""
    b, n_frames = gt_masks.shape[:2]
    if len(outputs) != n_frames:
        raise ValueError(f"{len(outputs)} frame outputs for {n_frames} target frames")
    parts: dict[str, list[Tensor]] = {"bce": [], "dice": [], "iou": [], "obj_score": []}
    for t, out in enumerate(outputs):
        m = out["multimasks"]  # (B, K, g, g)
        k = m.shape[1]
        gt = gt_masks[:, t, None].expand(-1, k, -1, -1).reshape(b * k, *gt_masks.shape[-2:])
        flat = m.reshape(b * k, *m.shape[-2:])
        parts["bce"].append(sigmoid_ce_loss(flat, gt).mean())
        parts["dice"].append(dice_loss(flat, gt).mean())
        with torch.no_grad():
            inter, union = (x.float() for x in intersection_union(flat > 0, gt))  # gt is {0, 1}
            actual = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).view(b, k)
        parts["iou"].append(F.mse_loss(out["ious"], actual))
        parts["obj_score"].append(F.binary_cross_entropy_with_logits(out["obj_score"],
                                                                     torch.ones_like(out["obj_score"])))
    losses = {name: torch.stack(v).mean() for name, v in parts.items()}
    losses["total"] = (weights.bce * losses["bce"] + weights.dice * losses["dice"] + weights.iou * losses["iou"]
                       + weights.obj_score * losses["obj_score"])
    return losses


def train_video_tracking(model, tokenizer, clips: Sequence[VideoClip], *, steps: int, batch_size: int = 8,
                         lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 0,
                         trainable: Sequence[str] = VIDEO_TRAINABLE, weights: VideoLossWeights = VideoLossWeights(),
                         dropout: bool = False, seed: int = 0, log_every: int = 0) -> list[dict[str, float]]:
    """AdamW on ``trainable`` (default `VIDEO_TRAINABLE`: all but the image encoder) for ``steps`` steps of
    ``batch_size`` clips drawn (with a seeded shuffle, epoch by epoch) from ``clips``; linear warm-up then
    linear decay to 0 (`build_scheduler`). The image encoder's features are computed once per clip.
    Leaves the model in eval mode; returns per-step {"step", "lr", "total", "bce", "dice", "iou", "obj_score"}.

    ``dropout``: False (default) runs the steps in eval mode. On this path SAM-2's train / eval modes
    differ only by dropout (memory attention, 0.1): the memory mask is the sigmoid of the logits in both
    (the model's ``binarize_mask_from_pts_for_mem_enc`` is off; only the video predictor turns it on,
    for its prompted frame), the memory stride is 1 and object pointers come from frame 0 and the
    frames before. A few hundred steps on small clips gain nothing from the noise, and it costs ~10 %
    of a CPU step. True: SAM-2's training mode (Meta's recipe).

    ``trainable`` takes the globs of `evf_sam.engine.optim.apply_trainable`: e.g. drop "encoder.*" and
    "projector.*" to fine-tune only the tracking of a model whose text grounding is already trained.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    if not clips:
        raise ValueError("no training clips")
    _sam2(model)
    apply_trainable(model, trainable)
    from evf_sam.predictor import _tokenize

    feats = [encode_clip_frames(model, c) for c in clips]
    ids, pad = _tokenize(model, tokenizer, [f.expression for f in feats])  # (N, L): padded to the longest
    by_len: dict[int, list[int]] = {}
    for i, f in enumerate(feats):
        by_len.setdefault(f.masks.shape[0], []).append(i)
    if len(by_len) > 1:
        raise ValueError(f"training clips have different lengths {sorted(by_len)}; use one length")
    optimizer = build_optimizer(model, lr=lr, weight_decay=weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=steps, warmup_steps=warmup_steps)
    rng = random.Random(seed)
    order: list[int] = []
    history = []
    model.train(dropout)
    model.sam.image_encoder.eval()
    try:
        for step in range(steps):
            batch = []
            while len(batch) < min(batch_size, len(feats)):
                if not order:
                    order = list(range(len(feats)))
                    rng.shuffle(order)
                batch.append(order.pop())
            chosen = [feats[i] for i in batch]
            outputs = track_clips(model, chosen, ids[batch], pad[batch])
            losses = video_tracking_loss(outputs, torch.stack([f.masks for f in chosen]), weights)
            total = float(losses["total"].detach())
            if not math.isfinite(total):
                raise FloatingPointError(f"video tracking loss is {total} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            rec = {"step": step, "lr": optimizer.param_groups[0]["lr"], **{k: float(v.detach()) for k, v in losses.items()}}
            scheduler.step()
            history.append(rec)
            if log_every and (step % log_every == 0 or step == steps - 1):
                log.info("video step %d: loss %.4f (bce %.4f dice %.4f iou %.4f obj %.4f)", step, rec["total"],
                         rec["bce"], rec["dice"], rec["iou"], rec["obj_score"])
    finally:
        model.eval()
    return history

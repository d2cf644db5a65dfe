"""Text-prompted video segmentation with EVF-SAM2: text prompts on one frame, SAM-2's memory
propagating the masks through the video (hustvl/EVF-SAM ``inference_video.py`` / ``demo_video.py``).

    predictor = EvfSam2VideoPredictor.from_pretrained("evf-sam2")        # an EVF-SAM2 checkpoint
    frames, fps = load_video("clip.mp4")                                # or a directory of frames
    result = predictor.predict(frames, ["the dog", "the red ball"], frame_idx=0)
    result.masks          # (P, T, H, W) bool: prompt p's mask on frame t
    write_video_outputs("out/", frames, result, fps=fps)   # masks/*.png, overlay.mp4, video.json

What runs (official ``model/evf_sam2_video.py`` ``EvfSam2Model.inference``):

1. each prompt: BEiT-3 on (the prompt frame at 224 px -- bicubic with antialiasing, as
   inference_video.py; see ``beit_antialias`` --, the text) -> vision [CLS] -> projector ->
   the (1, 1, C) sparse prompt (`EvfSam.encode_prompts`, exactly as for images);
2. Meta's ``sam2`` video predictor (``SAM2VideoPredictor``, sam2 1.1.0) with the model's SAM-2 weights
   (shared, not copied) and the settings of ``build_sam2_video_predictor`` (stability fallback,
   binarised memory masks of prompted frames, ``fill_hole_area=8``): on the prompt frame, the
   text embedding is the SAM-2 prompt (the official vendored predictor's ``add_new_text``: the
   empty sparse embedding + the text embedding, no point padding, dense = ``no_mask_embed``;
   `Sam2VideoTracker.add_new_text` here), then ``propagate_in_video`` forward to the last frame and,
   for a prompt frame > 0, backward to the first. Each prompt is one tracked object; objects are
   tracked independently (sam2 1.1.0 runs every object on its own slice), so tracking several
   prompts at once gives each the masks it gets alone.
3. SAM-2 input frames as ``sam2.utils.misc.load_video_frames``: PIL ``resize((S, S))`` of the RGB
   frame, / 255, ImageNet mean / std; masks are SAM-2's logits bilinearly resized to the video's size.

The official code supports one prompt on frame 0; several prompts and ``frame_idx`` > 0 are ours.
Frames where SAM-2's object-score head says "no object" get logits of -1024 (SAM-2's
``NO_OBJ_SCORE``), i.e. an empty mask. SAM-2's hole filling (``fill_hole_area``) needs the
``sam2._C`` CUDA extension; without it (on a CPU) ``sam2`` skips it with a warning, as here.

Outputs (`write_video_outputs`): ``masks/<pp>_<prompt-slug>/<ttttt>.png`` (0 / 255, the video's size),
``overlay.mp4`` (H.264 through PyAV, every prompt in its own colour with an outline and a legend,
`evf_sam.visualize.render_masks`; an animated ``overlay.gif`` when PyAV is missing) and
``video.json`` (frames, size, fps, prompts, per-frame mask areas). Everything is written into a
temporary directory next to the output and moved in at the end (files via `evf_sam.atomic`).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from evf_sam.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["EvfSam2VideoPredictor", "FRAME_EXTENSIONS", "VideoPrediction", "build_video_tracker", "load_video",
           "sam2_frame_preprocess", "write_video_outputs"]

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # sam2.utils.misc.load_video_frames
IMAGENET_STD = (0.229, 0.224, 0.225)
RESULTS_FILE = "video.json"
DEFAULT_FPS = 30.0  # frame directories have no rate; the official demo_video.py writes 30 fps
# build_sam2_video_predictor(apply_postprocessing=True) on top of the model's SAM2Base flags
_VIDEO_POSTPROCESSING = dict(fill_hole_area=8, binarize_mask_from_pts_for_mem_enc=True)


# ---------------------------------------------------------------------------------------------
# Frames


def _frame_key(p: Path) -> tuple:
    """Numeric stems in numeric order (``2.jpg`` before ``10.jpg``), then the rest by name."""
    return (0, int(p.stem), p.name) if p.stem.isdigit() else (1, 0, p.name)


def load_video(path: str | Path) -> tuple[list[np.ndarray], float | None]:
    """A video file (anything FFmpeg decodes, through PyAV) or a directory of frames -> (frames, fps).

    frames: T arrays (H, W, 3) uint8 RGB, all the same size; fps: the stream's average rate, None
    for a directory (files with `FRAME_EXTENSIONS`, numeric names in numeric order, e.g. the
    official ``00000.jpg`` ...). Raises FileNotFoundError / ValueError naming the problem.
    """
    from evf_sam.preprocess import load_image

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video {str(path)!r} not found; pass a video file or a directory of frames")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS),
                       key=_frame_key)
        if not files:
            raise ValueError(f"no frames in {str(path)!r}: expected image files ({', '.join(FRAME_EXTENSIONS)})")
        frames = [load_image(f) for f in files]
        fps = None
    else:
        frames, fps = _decode_video(path)
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"frames of {str(path)!r} differ in size ({sorted(sizes)}); all frames must have one size")
    return frames, fps


def _decode_video(path: Path) -> tuple[list[np.ndarray], float | None]:
    try:
        import av
    except ImportError:
        raise ImportError("reading a video file needs PyAV (pip install av; scripts/install.sh installs it); "
                          "or pass a directory of frames") from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{str(path)!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode {str(path)!r} as a video ({e}); pass a video file or a directory of "
                         f"frames") from None
    if not frames:
        raise ValueError(f"{str(path)!r} has no frames")
    return [np.ascontiguousarray(f) for f in frames], (float(rate) if rate else None)


def sam2_frame_preprocess(frame: np.ndarray, size: int) -> Tensor:
    """SAM-2's video frame input (``sam2.utils.misc._load_img_as_tensor`` + ``load_video_frames``):
    PIL ``resize((S, S))`` (bicubic) of the RGB frame, / 255 in float64, then float32 ImageNet
    normalisation. frame: (H, W, 3) uint8 -> (3, S, S) float32."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(frame).resize((size, size))) / 255.0
    x = torch.from_numpy(resized).permute(2, 0, 1).to(torch.float32)
    x -= torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    x /= torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return x


class _LazyFrames:
    """``inference_state["images"]``: frame t preprocessed when SAM-2 asks for it, so a long video is
    never held as (T, 3, S, S) float32 (sam2's own loader does the same with ``async_loading_frames``)."""

    def __init__(self, frames: Sequence[np.ndarray], size: int) -> None:
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> Tensor:
        return sam2_frame_preprocess(self.frames[t], self.size)


# ---------------------------------------------------------------------------------------------
# SAM-2 video predictor with a text prompt

_INIT_LOCK = threading.Lock()
_TRACKER_CLASS: type | None = None


_TEXT_PROMPT_ENCODER: type | None = None


def _text_prompt_encoder_class() -> type:
    """sam2's ``PromptEncoder`` whose forward also takes a text prompt (``self.text_embeds``, (1, 1, C)),
    as the vendored EVF-SAM2 ``PromptEncoder.forward(..., text_embeds)`` ((B, 1, C) for B objects,
    `evf_sam.engine.video_tracking`): with a text prompt the points
    are dropped (not padded with a "not a point"), the text embedding is appended to the empty sparse
    embedding; the dense embedding is unchanged (``no_mask_embed`` without a mask input)."""
    global _TEXT_PROMPT_ENCODER
    if _TEXT_PROMPT_ENCODER is None:
        from sam2.modeling.sam.prompt_encoder import PromptEncoder

        def forward(self, points, boxes, masks):
            if self.text_embeds is None:
                return PromptEncoder.forward(self, points, boxes, masks)
            sparse, dense = PromptEncoder.forward(self, None, None, masks)
            text = self.text_embeds.to(sparse.dtype)  # (B, 1, C): B objects (training tracks B clips)
            return torch.cat([sparse.expand(text.shape[0], -1, -1), text], dim=1), dense

        _TEXT_PROMPT_ENCODER = type("TextPromptEncoder", (PromptEncoder,), {"forward": forward,
                                                                           "__module__": __name__})
    return _TEXT_PROMPT_ENCODER


class _TrackerMixin:
    """``SAM2VideoPredictor`` + ``add_new_text`` (official vendored predictor), frames from memory."""

    def __init__(self, arch) -> None:
        super().__init__(arch)
        for k, v in _VIDEO_POSTPROCESSING.items():
            setattr(self, k, v)

    def _build_sam_heads(self):
        super()._build_sam_heads()
        pe = self.sam_prompt_encoder  # same parameters and names; forward also takes a text prompt
        pe.__class__ = _text_prompt_encoder_class()
        pe.text_embeds = None

    @torch.inference_mode()
    def init_state_from_frames(self, frames: Sequence[np.ndarray]) -> dict:
        """``init_state`` on in-memory RGB frames (T arrays (H, W, 3) uint8) instead of a JPEG folder."""
        import sam2.sam2_video_predictor as svp

        h, w = frames[0].shape[:2]
        images = _LazyFrames(frames, self.image_size)
        with _INIT_LOCK:  # init_state reads frames only through this module-level function
            original = svp.load_video_frames
            svp.load_video_frames = lambda **kwargs: (images, h, w)
            try:
                return self.init_state(video_path="<frames>")
            finally:
                svp.load_video_frames = original

    @torch.inference_mode()
    def add_new_text(self, inference_state: dict, frame_idx: int, obj_id: int, text_embedding: Tensor) -> Tensor:
        """The text prompt of object ``obj_id`` on frame ``frame_idx`` (before tracking starts).

        text_embedding: (1, 1, C) projected BEiT-3 feature -> (1, 1, H, W) logits on that frame at the
        video's size. As ``add_new_points_or_box`` with no points: the frame becomes a conditioning
        frame, SAM-2's heads run with multimask output (0 points), the memory is encoded when
        propagation starts.
        """
        obj_idx = self._obj_id_to_idx(inference_state, obj_id)
        if frame_idx in inference_state["frames_tracked_per_obj"][obj_idx]:
            raise RuntimeError("text prompts are added before propagation; call reset_state first")
        inference_state["point_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        inference_state["mask_inputs_per_obj"][obj_idx].pop(frame_idx, None)
        self.sam_prompt_encoder.text_embeds = text_embedding.reshape(1, 1, -1)
        try:
            out, _ = self._run_single_frame_inference(
                inference_state=inference_state, output_dict=inference_state["output_dict_per_obj"][obj_idx],
                frame_idx=frame_idx, batch_size=1, is_init_cond_frame=True, point_inputs=None, mask_inputs=None,
                reverse=False, run_mem_encoder=False)
        finally:
            self.sam_prompt_encoder.text_embeds = None
        inference_state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][frame_idx] = out
        _, video_res = self._get_orig_video_res_output(inference_state, out["pred_masks"])
        return video_res


def _tracker_class() -> type:
    global _TRACKER_CLASS
    if _TRACKER_CLASS is None:
        from evf_sam.models.sam2_backend import _backend_class, _import_sam2, _Sam2BackendMixin

        _import_sam2()
        _backend_class()
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        _TRACKER_CLASS = type("Sam2VideoTracker", (_TrackerMixin, _Sam2BackendMixin, SAM2VideoPredictor), {
            "__module__": __name__, "__qualname__": "Sam2VideoTracker", "__doc__": _TrackerMixin.__doc__})
    return _TRACKER_CLASS


def build_video_tracker(sam: torch.nn.Module) -> torch.nn.Module:
    """A ``SAM2VideoPredictor`` (with `_TrackerMixin`) whose parameters and buffers ARE those of ``sam``
    (a `Sam2Backend`, e.g. ``EvfSam.sam``): built on the meta device, then ``load_state_dict(assign=True)``,
    so no weights are copied and training / loading the model updates the tracker too. Eval mode."""
    arch = getattr(sam, "arch", None)
    if arch is None or not hasattr(sam, "memory_attention"):
        raise ValueError("text-prompted video needs an EVF-SAM2 model (SAM-2 backend); this model's SAM is "
                         f"{type(sam).__name__}")
    cls = _tracker_class()
    with torch.device("meta"):
        tracker = cls(arch)
    tracker.load_state_dict(sam.state_dict(), strict=True, assign=True)
    leftover = [n for n, t in list(tracker.named_parameters()) + list(tracker.named_buffers()) if t.is_meta]
    if leftover:
        raise RuntimeError(f"video tracker tensors not shared with the model: {leftover[:5]}")
    tracker._keep_pe_float32()
    return tracker.eval()


# ---------------------------------------------------------------------------------------------
# Predictor


@dataclass
class VideoPrediction:
    """Masks of P prompts on T frames of size (H, W), on CPU."""

    masks: Tensor  # (P, T, H, W) bool = logits > 0
    prompts: list[str]  # (P,)
    frame_idx: int  # the frame the prompts were given on
    logits: Tensor | None = None  # (P, T, H, W) float32 when predict(keep_logits=True)

    @property
    def areas(self) -> list[list[int]]:
        """areas[t][p]: mask pixels of prompt p on frame t."""
        return self.masks.sum((-2, -1)).T.tolist()


class EvfSam2VideoPredictor:
    """An EVF-SAM2 `EvfSam` (SAM-2 backend), its tokenizer and a SAM-2 video tracker on the same weights.

    Args:
        model: an `EvfSam` with a SAM-2 backend; float32 / bfloat16 / float16 (the lower precisions
            run under autocast, as the official fp16 inference does).
        tokenizer: as `EvfSamPredictor` (None: the directory the model was loaded from).
        beit_antialias: the BEiT-3 input's bicubic resize with antialiasing (True: official
            inference_video.py, whose ``beit3_preprocess`` keeps torchvision's default) or without
            (False: official demo_video.py, which imports inference.py's ``antialias=None`` one).
    """

    def __init__(self, model, tokenizer: Any = None, *, beit_antialias: bool = True) -> None:
        from evf_sam.predictor import _resolve_tokenizer

        self.model = model.eval()
        self.beit_antialias = bool(beit_antialias)
        self.tokenizer = _resolve_tokenizer(model, tokenizer)
        self.tracker = build_video_tracker(model.sam)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "EvfSam2VideoPredictor":
        from evf_sam.hub import resolve_checkpoint
        from evf_sam.models.evf_sam import EvfSam

        path = resolve_checkpoint(path)
        return cls(EvfSam.from_pretrained(path, dtype=dtype, device=device), tokenizer=path)

    def _autocast(self):
        m = self.model
        if m.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(m.device.type, dtype=m.dtype)

    @torch.inference_mode()
    def embed_prompts(self, frame: np.ndarray, prompts: Sequence[str]) -> Tensor:
        """BEiT-3 + projector on (``frame``, each prompt) -> (P, 1, C) SAM-2 prompts."""
        from evf_sam.predictor import _tokenize
        from evf_sam.preprocess import beit3_preprocess

        m = self.model
        ids, pad = _tokenize(m, self.tokenizer, list(prompts))  # (P, T), (P, T)
        beit = beit3_preprocess(frame, m.beit_image_size, antialias=self.beit_antialias)[None]
        beit = beit.to(device=m.device, dtype=m.dtype)
        return m.encode_prompts(beit.expand(len(prompts), -1, -1, -1), ids.to(m.device), pad.to(m.device))

    def propagate(self, frames: Sequence[np.ndarray], prompts: str | Sequence[str], frame_idx: int = 0
                  ) -> Iterator[tuple[int, Tensor]]:
        """Yields (t, logits (P, H, W) float32 on CPU) for every frame: the prompt frame, the frames
        after it in order, then (for ``frame_idx`` > 0) the frames before it, nearest first."""
        prompts = _check_prompts(prompts)
        frames = _check_frames(frames)
        if not 0 <= frame_idx < len(frames):
            raise ValueError(f"frame_idx {frame_idx} is outside the video (frames 0..{len(frames) - 1})")
        with torch.inference_mode(), self._autocast():
            text = self.embed_prompts(frames[frame_idx], prompts)  # (P, 1, C)
            state = self.tracker.init_state_from_frames(frames)
            for p in range(len(prompts)):
                self.tracker.add_new_text(state, frame_idx, obj_id=p, text_embedding=text[p])
        seen = set()
        for reverse in ((False, True) if frame_idx > 0 else (False,)):
            steps = self.tracker.propagate_in_video(state, start_frame_idx=frame_idx, reverse=reverse)
            while True:  # the contexts cover each step only, never the caller's code between yields
                with torch.inference_mode(), self._autocast():
                    try:
                        t, obj_ids, logits = next(steps)
                    except StopIteration:
                        break
                    order = [obj_ids.index(p) for p in range(len(prompts))]
                    logits = logits[order, 0].float().cpu()
                if t not in seen:
                    seen.add(t)
                    yield int(t), logits.clone()  # a normal tensor, not an inference-mode one

    def predict(self, frames: Sequence[np.ndarray], prompts: str | Sequence[str], frame_idx: int = 0, *,
                keep_logits: bool = False) -> VideoPrediction:
        """`propagate` collected: masks (P, T, H, W) bool (and the float32 logits if ``keep_logits``)."""
        prompts = _check_prompts(prompts)
        frames = _check_frames(frames)
        h, w = frames[0].shape[:2]
        masks = torch.zeros(len(prompts), len(frames), h, w, dtype=torch.bool)
        logits = torch.empty(len(prompts), len(frames), h, w) if keep_logits else None
        for t, lg in self.propagate(frames, prompts, frame_idx):
            masks[:, t] = lg > 0
            if logits is not None:
                logits[:, t] = lg
        return VideoPrediction(masks=masks, prompts=prompts, frame_idx=frame_idx, logits=logits)


def _check_prompts(prompts: str | Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} ({p!r}) is empty or not a string; every prompt needs text")
        out.append(p.strip())
    if not out:
        raise ValueError("at least one prompt is needed")
    return out


def _check_frames(frames: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    if len(frames) == 0:
        raise ValueError("the video has no frames")
    shape = frames[0].shape
    for t, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {t} must be an (H, W, 3) uint8 RGB array (use load_video)")
        if f.shape != shape:
            raise ValueError(f"frame {t} is {f.shape[:2]}, frame 0 is {shape[:2]}: all frames must have one size")
    return frames


# ---------------------------------------------------------------------------------------------
# Outputs


def _slug(prompt: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-") or "prompt"


def _png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def encode_overlay_video(frames: Sequence[np.ndarray], fps: float) -> tuple[bytes, str]:
    """(T, H, W, 3) uint8 frames -> (file bytes, extension): H.264 MP4 (yuv420p; odd sides padded by one
    edge pixel) through PyAV, or an animated GIF through Pillow when PyAV is not installed."""
    try:
        import av
    except ImportError:
        from PIL import Image

        buf = io.BytesIO()
        ims = [Image.fromarray(f) for f in frames]
        ims[0].save(buf, format="GIF", save_all=True, append_images=ims[1:], duration=max(1, round(1000 / fps)),
                    loop=0)
        return buf.getvalue(), "gif"
    from fractions import Fraction

    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                      rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + pw, h + ph, "yuv420p"
        for f in frames:
            if ph or pw:
                f = np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue(), "mp4"


def write_video_outputs(out: str | Path, frames: Sequence[np.ndarray], result: VideoPrediction, *,
                        fps: float | None = None, overlay: bool = True, meta: dict | None = None) -> dict:
    """Writes the masks, the overlay video and ``video.json`` (see the module docstring) into ``out``;
    returns the summary written to ``video.json``. All files are written into a temporary directory
    next to ``out`` and moved in at the end: a failure leaves ``out`` as it was."""
    from evf_sam.visualize import render_masks

    out = Path(out)
    fps = float(fps) if fps else DEFAULT_FPS
    p_count, t_count, h, w = result.masks.shape
    out.resolve().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.resolve().name}.tmp-", dir=out.resolve().parent))
    try:
        masks = result.masks.numpy()
        dirs = [f"masks/{p:02d}_{_slug(prompt)}" for p, prompt in enumerate(result.prompts)]
        for p, d in enumerate(dirs):
            for t in range(t_count):
                atomic_write_bytes(tmp / d / f"{t:05d}.png", _png_bytes(masks[p, t].astype(np.uint8) * 255))
        overlay_file = None
        if overlay:
            canvases = [render_masks(frames[t], masks[:, t], result.prompts) for t in range(t_count)]
            data, ext = encode_overlay_video(canvases, fps)
            overlay_file = f"overlay.{ext}"
            atomic_write_bytes(tmp / overlay_file, data)
        areas = result.areas
        summary = {
            **(meta or {}),
            "frames": t_count, "height": h, "width": w, "fps": fps, "prompt_frame": result.frame_idx,
            "prompts": [{"index": p, "prompt": prompt, "masks": dirs[p],
                         "frames_with_mask": sum(1 for t in range(t_count) if areas[t][p] > 0)}
                        for p, prompt in enumerate(result.prompts)],
            "overlay": overlay_file,
            "areas": areas,  # areas[t][p]: mask pixels of prompt p on frame t
        }
        atomic_write_text(tmp / RESULTS_FILE, json.dumps(summary, indent=1) + "\n")
        _move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _move_into(tmp: Path, out: Path) -> None:
    """``tmp`` becomes ``out`` (absent or empty) or its entries replace those of the same name in ``out``."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    for f in sorted(tmp.iterdir()):
        dest = out / f.name
        if dest.is_dir() and f.is_dir():
            for sub in sorted(f.iterdir()):  # masks/<prompt>: replace per prompt directory
                if (dest / sub.name).exists():
                    shutil.rmtree(dest / sub.name)
                os.rename(sub, dest / sub.name)
        else:
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(f, dest)

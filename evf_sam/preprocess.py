"""THE preprocessing of EVF-SAM: one module for inference, evaluation and training.

It reproduces the official EVF-SAM code exactly (hustvl/EVF-SAM at 9935dc5; tests/test_official_parity.py):

    image = load_image("photo.jpg")                                   # (H, W, 3) uint8 RGB
    sam, (h, w) = sam_preprocess(image, 1024)                         # SAM-1: (3, 1024, 1024), resized (h, w)
    sam, _ = sam_preprocess(image, 1024, "square", pipeline="inference")   # EfficientSAM / SAM-2, predictor
    sam, _ = sam_preprocess(image, 1024, "square", pipeline="eval")        # EfficientSAM / SAM-2, evaluation
    beit = beit3_preprocess(image, 224)                               # (3, 224, 224) float32
    gt = resize_mask_like_sam(mask, 1024)                             # (1024, 1024), training targets

SAM branch, ``resize_mode="pad"`` (SAM-1, official ``model_type`` "ori"; inference.py and eval.py alike):
segment-anything's ``ResizeLongestSide(S).apply_image`` (target ``int(x * S / max(H, W) + 0.5)`` per
side; PIL bilinear resize of the uint8 image, which antialiases when shrinking), ``(x - mean) / std``
with mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) on 0-255 values, zero padding at the
bottom / right to S x S.

SAM branch, ``resize_mode="square"`` (EfficientSAM, SAM-2: ``model_type`` "effi" / "sam2"): the image is
stretched to S x S with no padding, by one of two official code paths, which differ (by up to a few
grey levels, more when shrinking), so the caller names the one it reproduces (``pipeline``):

* ``"inference"`` -- official inference.py ``sam_preprocess``: the (3, H, W) **uint8** tensor
  ``F.interpolate(mode="bilinear", align_corners=False)`` straight to S x S (no antialiasing; the
  result stays uint8, i.e. rounded), then normalised. Used by `EvfSamPredictor` and the CLI.
* ``"eval"`` -- official eval.py / utils/dataset.py (``Resize(1024).apply_image`` + ``ValDataset.preprocess``):
  a PIL bilinear resize of the uint8 image straight to S x S (torchvision ``resize(to_pil_image(x),
  (S, S))``; antialiased when shrinking), then normalised. Used by evaluation (`ReferEvalDataset`,
  the ADE20K eval dataset) and by training data and the embedding cache: the official training
  datasets (utils/refer_seg_dataset.py & co., LISA-style) take the same ``Resize`` transform.

BEiT-3 branch: ``ToTensor`` (/255), bicubic resize to 224 x 224 on the float tensor *without*
antialiasing (``F.interpolate(mode="bicubic", align_corners=False, antialias=False)``, which is
what torchvision's ``Resize(antialias=None)`` does on tensors), normalise with mean = std = 0.5.
Bicubic may overshoot [0, 1] slightly; like the official code we do not clamp.

Masks: logits (N, 1, 4h, 4w) -> ``EvfSam.postprocess_masks`` (SAM-1: bilinear to S, crop, bilinear to
the original size; square mode: bilinear straight to the original size) -> ``mask = logits > 0``
(`masks_from_logits`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

__all__ = [
    "BEIT3_MEAN",
    "BEIT3_STD",
    "OVERLAY_COLOR",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "RESIZE_MODES",
    "SQUARE_PIPELINES",
    "UnreadableImageError",
    "beit3_preprocess",
    "beit3_resize_normalize",
    "load_image",
    "masks_from_logits",
    "overlay_mask",
    "resize_mask_like_sam",
    "sam_normalize_pad",
    "sam_preprocess",
    "sam_resize",
    "sam_resize_square",
    "sam_resized_shape",
    "sam_valid_size",
]

PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM, on 0-255 values
PIXEL_STD = (58.395, 57.12, 57.375)
BEIT3_MEAN = (0.5, 0.5, 0.5)  # BEiT-3, on [0, 1] values
BEIT3_STD = (0.5, 0.5, 0.5)
OVERLAY_COLOR = (50, 120, 220)  # the official inference's visualisation colour
RESIZE_MODES = ("pad", "square")  # SAM-1 | EfficientSAM, SAM-2 (models/sam_backends.py)
SQUARE_PIPELINES = ("inference", "eval")  # official inference.py | eval.py (+ training data), "square" mode only


class UnreadableImageError(ValueError):
    """An image file exists but cannot be decoded (corrupt, truncated, not an image)."""


# ---------------------------------------------------------------------------------------------
# Loading


def load_image(src: str | Path | Image.Image | np.ndarray) -> np.ndarray:
    """Any image -> (H, W, 3) uint8 RGB, contiguous.

    - path: decoded with PIL, EXIF orientation applied (as ``cv2.imread`` in the official
      inference does). A missing file raises FileNotFoundError, an undecodable one
      `UnreadableImageError` (a ValueError); both name the file.
    - PIL image / ndarray: converted as below.

    Conversions: grayscale (L, 1, (H, W), (H, W, 1)) is repeated to 3 channels; an alpha channel
    (RGBA, LA, PA, (H, W, 4)) is dropped without compositing (as ``cv2.imread(IMREAD_COLOR)``);
    palette images are expanded; CMYK / YCbCr / LAB / HSV converted by PIL; 16-bit
    (``I;16*`` and uint16 arrays) maps 0..65535 to 0..255 as ``cv2.imread`` in the official
    inference does (``round(x / 256)``, saturated); 32-bit integer images (PIL ``I``) are 8-bit
    values if their maximum is <= 255, else 16-bit values (clipped at 0 / 65535); float images (PIL ``F``,
    float arrays) are taken as [0, 1] if their maximum is <= 1, else as 0..255, clipped and
    rounded; bool arrays map to 0 / 255.
    """
    if isinstance(src, (str, Path)):
        return _load_path(Path(src))
    if isinstance(src, Image.Image):
        return _from_pil(src)
    if isinstance(src, np.ndarray):
        return _from_array(src)
    if isinstance(src, Tensor):
        raise TypeError("load_image takes a path, a PIL image or an (H, W[, C]) numpy array, not a torch Tensor; "
                        "use tensor.permute(1, 2, 0).numpy() for a (3, H, W) tensor")
    raise TypeError(f"load_image takes a path, a PIL image or a numpy array, not {type(src).__name__}")


def _load_path(path: Path) -> np.ndarray:
    if not path.exists():
        raise FileNotFoundError(f"image not found: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"image path {str(path)!r} is a directory, not an image file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated / corrupt data fails here, inside the try
            return _from_pil(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise UnreadableImageError(f"cannot read image {str(path)!r}: {e.__class__.__name__}: {e} "
                                   f"(is it a valid PNG / JPEG / ... file?)") from None


def _from_pil(im: Image.Image) -> np.ndarray:
    im = ImageOps.exif_transpose(im) if im.getexif() else im
    mode = im.mode
    if mode.startswith("I;16"):
        return _from_array(np.asarray(im).astype(np.uint16, copy=False))
    if mode in ("I", "I;32", "I;32B"):  # 32-bit integers: 8-bit values if they fit, else 16-bit
        a = np.asarray(im, dtype=np.int64)
        return _from_array(np.clip(a, 0, 255 if a.max() <= 255 else 65535).astype(
            np.uint8 if a.max() <= 255 else np.uint16))
    if mode == "F":
        return _from_array(np.asarray(im, dtype=np.float32))
    if mode != "RGB":  # L, 1, P, RGBA, LA, PA, CMYK, YCbCr, LAB, HSV; PIL drops alpha without compositing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Palette images with Transparency ..." (alpha is dropped on purpose)
            im = im.convert("RGB")
    return np.array(im, dtype=np.uint8)  # a writable copy (PIL's buffer view is read-only)


def _from_array(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (channels last), "
                         f"got shape {a.shape}")
    if a.shape[2] == 4:
        a = a[:, :, :3]
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.clip(np.rint(a / 256.0), 0, 255).astype(np.uint8)  # as cv2.imread: convertTo(CV_8U, 1 / 256)
    elif np.issubdtype(a.dtype, np.integer):
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer image of dtype {a.dtype} has values in [{lo}, {hi}]; expected 0..255 "
                             f"(use uint16 for 16-bit images)")
        a = a.astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("float image has NaN or infinite values")
        scale = 255.0 if float(a.max()) <= 1.0 else 1.0
        a = np.clip(np.rint(a.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {a.dtype}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------------
# SAM branch


def sam_resized_shape(h: int, w: int, size: int = 1024) -> tuple[int, int]:
    """segment-anything's ``ResizeLongestSide.get_preprocess_shape``: (h', w') with max = ``size``."""
    scale = size * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_resize(image: np.ndarray, size: int = 1024) -> np.ndarray:
    """``ResizeLongestSide(size).apply_image``: (H, W, 3) uint8 -> (h', w', 3) uint8, PIL bilinear."""
    image = _check_uint8_rgb(image)
    h, w = sam_resized_shape(image.shape[0], image.shape[1], size)
    if (h, w) == image.shape[:2]:  # torchvision's resize returns the image unchanged at its own size
        return image.copy()
    return np.array(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def _sam_normalize(resized: Tensor | np.ndarray) -> Tensor:
    """(h', w', 3) uint8 array or (..., 3, h', w') tensor of 0-255 values -> float32 ``(x - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1) if isinstance(resized, np.ndarray) \
        else resized
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - mean) / std  # uint8 - float32 -> float32, as the official code


def sam_normalize_pad(resized: Tensor | np.ndarray, size: int = 1024) -> Tensor:
    """(h', w', 3) uint8 array or (..., 3, h', w') tensor of 0-255 values -> (..., 3, size, size)
    float32: ``(x - mean) / std``, zero padding at the bottom / right (after normalising, as SAM)."""
    x = _sam_normalize(resized)
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"resized image {h}x{w} is larger than the SAM input {size}x{size}")
    return F.pad(x, (0, size - w, 0, size - h))


def _check_resize_mode(resize_mode: str) -> None:
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode={resize_mode!r}; choose one of {', '.join(RESIZE_MODES)} "
                         f"(pad: SAM-1, square: EfficientSAM / SAM-2)")


def _check_pipeline(resize_mode: str, pipeline: str | None) -> None:
    if resize_mode == "square" and pipeline not in SQUARE_PIPELINES:
        raise ValueError(f"resize_mode='square' needs pipeline='inference' (official inference.py: uint8 tensor "
                         f"bilinearly interpolated to the square; predictor, CLI) or pipeline='eval' (official "
                         f"eval.py: PIL resize to the square; evaluation, training), got {pipeline!r}")
    if pipeline is not None and pipeline not in SQUARE_PIPELINES:
        raise ValueError(f"pipeline={pipeline!r}; choose one of {', '.join(SQUARE_PIPELINES)}")


def sam_resize_square(image: np.ndarray, size: int = 1024, pipeline: str = "inference") -> np.ndarray | Tensor:
    """(H, W, 3) uint8 -> the image stretched to (size, size), uint8, by one official path.

    ``pipeline="inference"``: (3, size, size) uint8 tensor, ``F.interpolate`` of the (1, 3, H, W) uint8
    tensor, bilinear, ``align_corners=False`` (official inference.py). ``"eval"``: (size, size, 3) uint8
    array, PIL bilinear resize (official utils/dataset.py ``Resize``).
    """
    image = _check_uint8_rgb(image)
    _check_pipeline("square", pipeline)
    if pipeline == "inference":
        x = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (3, H, W) uint8, as the official code
        return F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False)[0]
    if image.shape[:2] == (size, size):  # torchvision's resize returns the image unchanged at its own size
        return image.copy()
    return np.array(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def sam_preprocess(image: np.ndarray, size: int = 1024, resize_mode: str = "pad",
                   pipeline: str | None = None) -> tuple[Tensor, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> ((3, size, size) float32 normalised, (h', w') the image's extent in it).

    ``resize_mode="pad"`` (SAM-1): ``ResizeLongestSide`` to (h', w'), zero padding at the bottom / right;
    ``pipeline`` is not needed (official inference and evaluation agree). ``"square"`` (EfficientSAM,
    SAM-2): stretched to (size, size) = (h', w') by ``pipeline`` "inference" (official inference.py:
    predictor, CLI) or "eval" (official eval.py: evaluation, training data); see the module docstring.
    """
    _check_resize_mode(resize_mode)
    _check_pipeline(resize_mode, pipeline)
    if resize_mode == "square":
        return _sam_normalize(sam_resize_square(image, size, pipeline)).contiguous(), (int(size), int(size))
    resized = sam_resize(image, size)
    hw = (int(resized.shape[0]), int(resized.shape[1]))
    return sam_normalize_pad(resized, size).contiguous(), hw


def sam_valid_size(input_size: tuple[int, int], size: int, resize_mode: str = "pad") -> tuple[int, int]:
    """The image's extent inside the (size, size) SAM frame: ``input_size`` for "pad", the whole
    frame for "square" (the image is stretched over it). Training losses are taken over this region."""
    _check_resize_mode(resize_mode)
    return (int(size), int(size)) if resize_mode == "square" else (int(input_size[0]), int(input_size[1]))


def resize_mask_like_sam(mask: np.ndarray, size: int = 1024, resize_mode: str = "pad") -> np.ndarray:
    """A ground-truth mask (H, W) into the SAM input frame -> (size, size), same dtype.

    "pad": nearest resize to the image's resized shape (`sam_resized_shape`), zero padding at the
    bottom / right. "square": nearest resize to (size, size), like the stretched image.
    Nearest uses pixel centres (source index ``floor((i + 0.5) * H / h')``, as PIL ``NEAREST`` and
    torch ``nearest-exact``), so a mask resized with its image stays aligned with it.
    """
    _check_resize_mode(resize_mode)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    hh, ww = mask.shape
    h, w = (size, size) if resize_mode == "square" else sam_resized_shape(hh, ww, size)
    rows = np.minimum(np.floor((np.arange(h) + 0.5) * (hh / h)).astype(np.int64), hh - 1)
    cols = np.minimum(np.floor((np.arange(w) + 0.5) * (ww / w)).astype(np.int64), ww - 1)
    out = np.zeros((size, size), dtype=mask.dtype)
    out[:h, :w] = mask[rows[:, None], cols[None, :]]
    return out


# ---------------------------------------------------------------------------------------------
# BEiT-3 branch


def beit3_preprocess(image: np.ndarray, size: int = 224, *, antialias: bool = False) -> Tensor:
    """(H, W, 3) uint8 RGB -> (3, size, size) float32: /255, bicubic, (x - 0.5) / 0.5.

    ``antialias=False``: official inference.py / eval.py (``Resize(..., antialias=None)``);
    ``antialias=True``: official inference_video.py, whose ``Resize`` keeps torchvision's default."""
    image = _check_uint8_rgb(image)
    x = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # ToTensor
    return beit3_resize_normalize(x[None], size, antialias=antialias)[0]


def beit3_resize_normalize(x: Tensor, size: int = 224, *, antialias: bool = False) -> Tensor:
    """Batched tensor form: (B, 3, H, W) float in [0, 1] -> (B, 3, size, size). Identical per image
    to `beit3_preprocess`."""
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=antialias)
    mean = torch.tensor(BEIT3_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(BEIT3_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------
# Masks


def masks_from_logits(logits: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """The official binarisation: ``mask = logits > 0``."""
    return logits > 0


def overlay_mask(image: np.ndarray, mask: np.ndarray, color: Sequence[int] = OVERLAY_COLOR,
                 alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with ``mask`` (H, W) bool tinted: inside the mask
    ``(1 - alpha) * image + alpha * color`` (the official visualisation with alpha = 0.5)."""
    image = _check_uint8_rgb(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} differs from the image's {image.shape[:2]}")
    out = image.copy()
    tint = image[mask].astype(np.float32) * (1 - alpha) + np.asarray(color, np.float32) * alpha
    out[mask] = tint.astype(np.uint8)  # truncation, as the official numpy code
    return out


def _check_uint8_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB array (use load_image), got {desc}")
    image = np.ascontiguousarray(image)
    return image if image.flags.writeable else image.copy()  # torch.from_numpy warns on read-only arrays


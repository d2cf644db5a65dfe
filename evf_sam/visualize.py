"""Overlays people can read: N masks on one image, each in its own colour with an outline, and a
legend (colour swatch, prompt, score) under the image.

    canvas = render_masks(image, pred.masks.numpy(), pred.prompts, pred.scores.tolist())
    Image.fromarray(canvas).save("overlay.png")

Layout of the returned canvas (Hc, Wc, 3) uint8: the image at ``canvas[:H, :W]``, the legend band at
``canvas[H:]`` (one row per mask, in mask order), and, when the legend needs more width than a
narrow image has (at least `MIN_LEGEND_WIDTH` px), a strip of the legend's background colour at
``canvas[:H, W:]``. Pixels of the image outside every mask are unchanged.

Inside each mask (all drawing stays inside the mask it belongs to):
- the interior is tinted: ``(1 - alpha) * pixel + alpha * colour`` (alpha 0.45);
- the outermost ring (``contour`` px, 1 by default) is a contour in black or white, whichever
  contrasts with the mask's colour, so a mask is visible even where its colour matches the image
  (a blue shape masked in blue on a blue background);
- the next ``line_width`` px (2 for images up to 1000 px on the long side, growing with the
  image) are the mask's colour, solid.
Tints of all masks are drawn first (in order, overlaps mix), then every outline, so a later
mask's tint never hides an earlier mask's outline. A mask touching the image border is outlined
along the border.

Colours come from `PALETTE`, a fixed list of 12 saturated, mutually distinct colours (Sasha
Trubetskoy's "20 simple, distinct colours", 12 saturated ones); mask i gets ``PALETTE[i % 12]``.
Text uses PIL's built-in font (``ImageFont.load_default``), so nothing is downloaded.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["DARK", "LEGEND_BACKGROUND", "LEGEND_TEXT", "LIGHT", "MIN_LEGEND_WIDTH", "PALETTE", "contour_color",
           "draw_legend", "draw_masks", "mask_color", "mask_rings", "render_masks"]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 225, 25),  # yellow
    (145, 30, 180),  # purple
    (245, 130, 48),  # orange
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
    (210, 245, 60),  # lime
    (0, 0, 128),  # navy
    (170, 110, 40),  # brown
    (128, 0, 0),  # maroon
)
DARK = (0, 0, 0)
LIGHT = (255, 255, 255)
LEGEND_BACKGROUND = (28, 28, 28)
LEGEND_TEXT = (240, 240, 240)
MIN_LEGEND_WIDTH = 256  # px: a legend narrower than this cannot show a prompt
ALPHA = 0.45


def mask_color(i: int) -> tuple[int, int, int]:
    """Colour of mask ``i`` (cycles through `PALETTE`)."""
    return PALETTE[i % len(PALETTE)]


def contour_color(color: Sequence[int]) -> tuple[int, int, int]:
    """Black for a light colour, white for a dark one (ITU-R BT.601 luma, threshold 140 of 255)."""
    r, g, b = (int(c) for c in color[:3])
    return DARK if 0.299 * r + 0.587 * g + 0.114 * b > 140 else LIGHT


def default_line_width(height: int, width: int) -> int:
    """Outline width in px: 2 up to 1000 px on the long side, then ~1 px per 400 px."""
    return max(2, round(max(height, width) / 400))


def _erode(m: np.ndarray) -> np.ndarray:
    """Binary erosion with a 3 x 3 square; outside the image counts as background. (H, W) bool."""
    h, w = m.shape
    p = np.pad(m, 1, constant_values=False)
    out = m.copy()
    for dy in range(3):
        for dx in range(3):
            out &= p[dy:dy + h, dx:dx + w]
    return out


def mask_rings(mask: np.ndarray, contour: int, line_width: int) -> tuple[np.ndarray, np.ndarray]:
    """The outline of one (H, W) bool mask: (contour ring, colour band), both (H, W) bool, inside the
    mask. The contour is the mask's outer ``contour`` px (chessboard distance to the background or
    the image border), the band the ``line_width`` px inside it."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask
    for _ in range(contour):
        inner = _erode(inner)
    core = inner
    for _ in range(line_width):
        core = _erode(core)
    return mask & ~inner, inner & ~core


def _check_inputs(image: np.ndarray, masks) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image (evf_sam.preprocess.load_image gives one), got {desc}")
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (N, H, W) with (H, W) = the image's {image.shape[:2]}, got {masks.shape}")
    return image, masks.astype(bool, copy=False)


def draw_masks(image: np.ndarray, masks: np.ndarray, *, colors: Sequence[Sequence[int]] | None = None,
               alpha: float = ALPHA, line_width: int | None = None, contour: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 copy of ``image`` with the (N, H, W) bool ``masks`` tinted and outlined (see the
    module docstring). ``colors`` defaults to `mask_color(i)`; ``line_width`` / ``contour`` (px)
    default to `default_line_width` and ``max(1, line_width // 2)``."""
    image, masks = _check_inputs(image, masks)
    n, h, w = masks.shape
    colors = [mask_color(i) for i in range(n)] if colors is None else [tuple(int(v) for v in c[:3]) for c in colors]
    if len(colors) < n:
        raise ValueError(f"{len(colors)} colours for {n} masks")
    lw = default_line_width(h, w) if line_width is None else int(line_width)
    cw = max(1, lw // 2) if contour is None else int(contour)
    out = image.astype(np.float32)
    for m, c in zip(masks, colors):
        out[m] = out[m] * (1 - alpha) + np.asarray(c, np.float32) * alpha
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    for m, c in zip(masks, colors):
        ring, band = mask_rings(m, cw, lw)
        out[band] = c
        out[ring] = contour_color(c)
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # PIL's bundled FreeType font
    except (TypeError, ValueError, OSError, ImportError):  # PIL without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    """``text``, shortened with "…" to fit ``max_width`` px."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # longest prefix that fits with the ellipsis
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


def legend_font_size(width: int) -> int:
    """Caption font size (px) for a canvas ``width`` px wide: 12 .. 28."""
    return int(min(28, max(12, round(width / 40))))


def caption_text(caption: str, score: float | None = None, area: int | None = None) -> str:
    """One legend line: ``prompt  score 0.87`` (``  empty mask`` when ``area`` is 0)."""
    text = caption
    if score is not None:
        text += f"  score {float(score):.2f}"
    if area == 0:
        text += "  empty mask"
    return text


def draw_legend(width: int, captions: Sequence[str], colors: Sequence[Sequence[int]],
                scores: Sequence[float] | None = None, areas: Sequence[int] | None = None,
                *, font_size: int | None = None) -> np.ndarray:
    """(h, width, 3) uint8 legend band: per caption a row with a swatch of its colour (with the
    contour colour as a frame) and `caption_text`, shortened with "…" to fit."""
    size = legend_font_size(width) if font_size is None else int(font_size)
    font = _font(size)
    pad = max(4, size // 3)
    row = size + 2 * pad
    band = Image.new("RGB", (width, row * len(captions) + pad), LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(band)
    for i, caption in enumerate(captions):
        y = pad + i * row
        c = tuple(int(v) for v in colors[i][:3])
        sw = size  # swatch side
        x0, y0 = pad, y + pad
        draw.rectangle((x0, y0, x0 + sw - 1, y0 + sw - 1), fill=c, outline=contour_color(c), width=1)
        text = caption_text(caption, None if scores is None else scores[i], None if areas is None else areas[i])
        tx = x0 + sw + pad
        text = _fit(draw, text, font, width - tx - pad)
        draw.text((tx, y0 + sw // 2), text, fill=LEGEND_TEXT, font=font, anchor="lm")
    return np.asarray(band, dtype=np.uint8).copy()


def render_masks(image: np.ndarray, masks: np.ndarray, captions: Sequence[str] | None = None,
                 scores: Sequence[float] | None = None, *, alpha: float = ALPHA, line_width: int | None = None,
                 legend: bool = True) -> np.ndarray:
    """One combined image for one input image and N masks: `draw_masks` on top, `draw_legend`
    below (see the module docstring for the layout).

    image: (H, W, 3) uint8 RGB. masks: (N, H, W) bool (or (H, W) for one). captions: N prompts
    (default "mask 1", ...). scores: N floats shown beside the captions (e.g. SAM's predicted IoU).
    Returns (Hc, Wc, 3) uint8 with Hc = H + legend height (H without a legend), Wc = max(W, 256)
    with a legend (W without).
    """
    image, masks = _check_inputs(image, masks)
    n, h, w = masks.shape
    captions = [f"mask {i + 1}" for i in range(n)] if captions is None else [str(c) for c in captions]
    if len(captions) != n or (scores is not None and len(scores) != n):
        raise ValueError(f"{n} masks but {len(captions)} captions" +
                         ("" if scores is None else f" and {len(scores)} scores"))
    colors = [mask_color(i) for i in range(n)]
    top = draw_masks(image, masks, colors=colors, alpha=alpha, line_width=line_width)
    if not legend or n == 0:
        return top
    width = max(w, MIN_LEGEND_WIDTH)
    band = draw_legend(width, captions, colors, scores, [int(m.sum()) for m in masks])
    canvas = np.empty((h + band.shape[0], width, 3), np.uint8)
    canvas[:h, :w] = top
    canvas[:h, w:] = LEGEND_BACKGROUND
    canvas[h:] = band
    return canvas

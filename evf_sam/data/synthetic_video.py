"""Synthetic text-prompted video clips: coloured shapes moving on a grey background.

    clip = moving_shapes_clip(seed=0, n_frames=4, size=64)
    clip.frames        # T arrays (H, W, 3) uint8
    clip.masks         # (T, H, W) bool: the target in each frame
    clip.expression    # "the red circle": its colour is unique in the clip, so the colour grounds it

The drawing is that of the synthetic REFER images (`evf_sam.data.synthetic`: palette `COLOURS`,
`SHAPES` rasterised by `shape_mask`, mid-grey background). Every object (the target and
``n_distractors`` others, all of distinct colours) moves in a straight line at ``speed`` pixels per
frame in a random direction, stays inside the frame and never touches another object on any frame,
so the target's mask is the whole shape on every frame. Distractors move too: a mask copied from the
first frame, or the union of all shapes, does not follow the target. Deterministic in ``seed``.
Used to fine-tune and test EVF-SAM2's SAM-2 memory path (`evf_sam.engine.video_tracking`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from evf_sam.data.synthetic import _BACKGROUND, COLOURS, SHAPES, shape_mask

__all__ = ["ShapeClip", "moving_shapes_clip"]


@dataclass
class ShapeClip:
    """T frames of one clip and the masks of its objects (object 0 is the target)."""

    frames: list[np.ndarray]  # T arrays (H, W, 3) uint8
    object_masks: np.ndarray  # (K, T, H, W) bool, K = 1 + distractors, target first
    expression: str  # names the target: "the <colour> <shape>"
    objects: list[dict] = field(default_factory=list)  # per object: colour, shape, r, centres [(cx, cy)] * T

    @property
    def masks(self) -> np.ndarray:
        """(T, H, W) bool: the target."""
        return self.object_masks[0]


def moving_shapes_clip(seed: int, n_frames: int = 4, size: int = 64, *, n_distractors: int = 2,
                       colours: Sequence[str] = ("red", "green", "blue"), shapes: Sequence[str] = ("circle", "square"),
                       speed: tuple[float, float] = (0.06, 0.12), radius: tuple[float, float] = (0.1, 0.14)
                       ) -> ShapeClip:
    """A clip of ``1 + n_distractors`` shapes of distinct ``colours`` moving on a ``size`` x ``size`` frame.

    ``speed`` (per frame) and ``radius`` are fractions of ``size``, drawn uniformly from the ranges;
    directions are uniform. Raises ValueError for impossible parameters (unknown colour / shape, more
    objects than colours, fewer than 2 frames).
    """
    colours, shapes = tuple(colours), tuple(shapes)
    if set(colours) - set(COLOURS) or len(set(colours)) != len(colours):
        raise ValueError(f"colours must be distinct names from {list(COLOURS)}, got {list(colours)}")
    if not shapes or set(shapes) - set(SHAPES):
        raise ValueError(f"shapes must be names from {list(SHAPES)}, got {list(shapes)}")
    if not 0 <= n_distractors < len(colours):
        raise ValueError(f"n_distractors must be in 0..{len(colours) - 1} (one colour per object), got {n_distractors}")
    if n_frames < 2 or size < 16:
        raise ValueError(f"need n_frames >= 2 and size >= 16, got {n_frames}, {size}")
    rng = np.random.default_rng([int(seed), 1729])
    k = 1 + n_distractors
    picked = [str(c) for c in rng.choice(list(colours), size=k, replace=False)]
    for _ in range(1000):
        objs = []
        for colour in picked:
            r = float(rng.uniform(*radius)) * size
            v = float(rng.uniform(*speed)) * size
            a = float(rng.uniform(0, 2 * math.pi))
            vx, vy = v * math.cos(a), v * math.sin(a)
            # start so that the whole path stays inside the frame (1 px margin); skip impossible paths
            span_x, span_y = abs(vx) * (n_frames - 1), abs(vy) * (n_frames - 1)
            lo, hi = r + 1, size - r - 2
            if hi - lo < max(span_x, span_y):
                break
            x0 = float(rng.uniform(lo, hi - span_x)) + (span_x if vx < 0 else 0.0)
            y0 = float(rng.uniform(lo, hi - span_y)) + (span_y if vy < 0 else 0.0)
            objs.append({"colour": colour, "shape": str(rng.choice(list(shapes))), "r": r,
                         "centres": [(x0 + t * vx, y0 + t * vy) for t in range(n_frames)]})
        if len(objs) == k and all(
                math.dist(a["centres"][t], b["centres"][t]) > a["r"] + b["r"] + 2
                for t in range(n_frames) for i, a in enumerate(objs) for b in objs[i + 1:]):
            break
    else:
        raise RuntimeError(f"could not place {k} moving shapes in a {size}x{size} clip; use fewer or smaller ones")
    frames, masks = [], np.zeros((k, n_frames, size, size), dtype=bool)
    for t in range(n_frames):
        canvas = np.empty((size, size, 3), np.uint8)
        canvas[:] = _BACKGROUND
        for j, o in enumerate(objs):
            cx, cy = o["centres"][t]
            m = shape_mask(o["shape"], cx, cy, o["r"], size, size).astype(bool)
            canvas[m] = COLOURS[o["colour"]]
            masks[j, t] = m
        frames.append(canvas)
    target = objs[0]
    return ShapeClip(frames=frames, object_masks=masks, expression=f"the {target['colour']} {target['shape']}",
                     objects=objs)

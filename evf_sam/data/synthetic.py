"""Synthetic coloured-shape referring dataset, written in the exact REFER layout.

    python -m evf_sam.data.synthetic --root data/synthetic --num-train 2000     # ~ seconds
    stats = make_synthetic_refer("data/synthetic", seed=0, num_train=200, num_val=20, num_test=20)

Scenes: grey background, 2-4 non-overlapping shapes (circle, square, triangle), each a distinct
colour from {red, yellow, green, cyan, blue, magenta}, radius image_size/10 .. image_size/6.
Every expression names its object's colour ("red", "the red circle", "the red one on the left",
"the bigger red shape", ...), so the colour alone grounds it; shape / position / size words ride
along as extra tokens. Because the colour is unique within an image, a model that segments the
union of all shapes scores poorly: grounding is required.

``difficulty="grounded"`` (configs/data/synthetic_grounded.yaml) makes the text need the image:
colours repeat within an image (4 colours, `GROUNDED_COLOURS`; radius image_size/11 .. /5.5), and each
object is referred to by whatever singles it out there: its colour or shape when unique, the pair,
its position ("the shape on the left"), ordinal ("the second shape from the right"), size ("the
biggest shape"), or an attribute plus position / size ("the red one on the left", "the left circle",
"the bigger red shape"). Every sentence dict carries ``"type"`` (`EXPRESSION_TYPES`), an extra key
the REFER reader passes through, so results can be broken down per type (evf_sam.type_scores).

Written (same images shared by all three datasets, as COCO's are)::

    <root>/refer_seg/images/mscoco/images/train2014/COCO_train2014_%012d.jpg   (JPEG, quality 95)
    <root>/refer_seg/refcoco/  instances.json refs(unc).p      train / val / testA / testB
    <root>/refer_seg/refcoco+/ instances.json refs(unc).p      (no location words, like RefCOCO+)
    <root>/refer_seg/refcocog/ instances.json refs(umd).p      train / val / test (longer expressions)
    <root>/refer_seg/sentences.txt                             every sentence (tokenizer training)
    <root>/refer_seg/_SYNTHETIC_DONE.json                      parameters + stats, written last

With ``grefcoco=True`` (``--grefcoco``) it also writes a gRefCOCO look-alike (`evf_sam.data.grefer`
layout) on its own scenes, where colours may repeat within an image::

    <root>/refer_seg/grefcoco/ instances.json grefs(unc).json     train / val / testA / testB
    <root>/refer_seg/images/mscoco/images/train2014/COCO_train2014_%012d.jpg   ids from GREF_IMAGE_ID0 + 1

Its expressions name a set of objects: one ("the red circle"), several ("all the red shapes", "both
circles", "the blue ones") or none: a palette colour absent from the image ("the green shape"), a
shape absent from it ("all the triangles") or words never drawn ("the purple star"); no-target refs
have ``ann_id == [-1]``, as the release (about one ref in four per image).

Annotations cycle through polygon, compressed RLE and uncompressed RLE segmentations; the pixels
painted into the image are exactly the annotation's mask. Deterministic in ``seed``; idempotent:
a complete dataset with the same parameters is reused, a partial one or different parameters is
rebuilt.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from evf_sam.data.refer import IMAGE_DIRS, atomic_write_bytes, refer_dir, write_refer

__all__ = ["COLOURS", "DIFFICULTIES", "EXPRESSION_TYPES", "GREF_IMAGE_ID0", "GROUNDED_COLOURS", "SHAPES",
           "expression_types", "grounded_candidates", "grounded_sentences", "make_synthetic_refer", "shape_mask",
           "synthetic_grefcoco_sentences", "synthetic_sentences", "MANIFEST", "main"]

MANIFEST = "_SYNTHETIC_DONE.json"
_STARTED = "_SYNTHETIC_STARTED.json"
_VERSION = 2
# Six hues 60 degrees apart: a frozen, randomly initialised tiny SAM encoder separates them well
# (with orange and purple, between red/yellow and blue/red, a tiny model confused the neighbours).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "yellow": (235, 220, 30), "green": (30, 170, 40),
    "cyan": (30, 200, 220), "blue": (30, 60, 220), "magenta": (220, 40, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
_BACKGROUND = (128, 128, 128)
_DATASETS = (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd"))
_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
          "middle": "in the middle"}


# -- expressions ------------------------------------------------------------------------------------

DIFFICULTIES = ("easy", "hard", "colour_only", "grounded")


def _expressions(colour: str, shape: str, where: str, size: str | None, style: str,
                 difficulty: str = "easy", unique_shape: bool = False) -> list[str]:
    """Candidate expressions for one object.

    style: "unc" (RefCOCO: short, location allowed), "plus" (RefCOCO+: no location words),
    "umd" (RefCOCOg: longer sentences). ``where`` in _WHERE, ``size`` "big"/"small"/None.
    difficulty: "easy" (default): every expression contains ``colour``; "colour_only": just the
    colour forms ("red", "the red one", "the red circle"); "hard": "easy" plus expressions without
    the colour that still single the object out ("the circle" when its shape is unique in the
    image, "the biggest shape", "the shape on the left").
    """
    if difficulty == "colour_only":
        return [colour, f"the {colour} one", f"the {colour} {shape}"]
    out = _colour_expressions(colour, shape, where, size, style)
    if difficulty == "hard":
        out += _colourless_expressions(shape, where, size, style, unique_shape)
    return out


def _colourless_expressions(shape: str, where: str, size: str | None, style: str, unique_shape: bool) -> list[str]:
    out = [f"the {shape}", f"{shape}"] if unique_shape else []
    if size == "big":
        out.append("the biggest shape")
    elif size == "small":
        out.append("the smallest shape")
    if style != "plus" and where in ("left", "right"):
        out.append(f"the shape {_WHERE[where]}")
    return out


def _colour_expressions(colour: str, shape: str, where: str, size: str | None, style: str) -> list[str]:
    c, s = colour, shape
    out = [c, f"the {c} {s}", f"the {c} one", f"{c} {s}", f"the {c} shape"]
    if size == "big":
        out += [f"the bigger {c} shape", f"the big {c} {s}"]
    elif size == "small":
        out += [f"the smaller {c} shape", f"the small {c} one"]
    if style == "plus":
        return out
    w = _WHERE[where]
    out += [f"the {c} one {w}", f"{c} {s} {w}", f"the {c} {s} {w}"]
    if style == "umd":
        z = f"{'bigger ' if size == 'big' else 'smaller ' if size == 'small' else ''}"
        out = [f"a {z}{c} {s} that is {w} of the picture", f"the {z}{c} {s} {w}",
               f"the {c} coloured {s} {w}", f"the {c} {s}", f"the {z}{c} shape"]
    return out


def synthetic_sentences(difficulties: Sequence[str] = ("easy", "hard", "colour_only")) -> list[str]:
    """Every sentence the generator can produce for ``difficulties`` with any other knobs (sorted,
    de-duplicated): tokenizer training text. The default leaves "grounded" out, so this list (and a
    tokenizer trained on it) is what it was before that mode existed."""
    out = set()
    for d in difficulties:
        if d not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)}, got {d!r}")
    if "grounded" in difficulties:
        out.update(grounded_sentences())
    for c in COLOURS:
        for s in SHAPES:
            for w in _WHERE:
                for z in ("big", "small", None):
                    for style in ("unc", "plus", "umd"):
                        for d in difficulties:
                            if d != "grounded":
                                out.update(_expressions(c, s, w, z, style, d, unique_shape=True))
    return sorted(out)


# -- gRefCOCO expressions ---------------------------------------------------------------------------

GREF_IMAGE_ID0 = 1_000_000  # gRefCOCO scene image ids start after this (REFER scenes use 1 .. N)
_NEVER_COLOURS = ("purple", "orange")  # never painted: "the purple star" names nothing
_NEVER_SHAPES = ("star", "heart")
_COUNT_WORDS = {2: "both", 3: "all three", 4: "all four"}


def _plural(shape: str) -> str:
    return shape + "s"


def _gref_colour_group(colour: str, shape_of: list[str]) -> list[str]:
    """Expressions for every object of ``colour`` (``shape_of``: their shapes)."""
    n, c = len(shape_of), colour
    if n == 1:
        return [c, f"the {c} shape", f"the {c} {shape_of[0]}", f"the {c} one"]
    out = [f"all the {c} shapes", f"the {c} ones", f"the {c} shapes", f"every {c} shape"]
    if n in _COUNT_WORDS:
        out.append(f"{_COUNT_WORDS[n]} {c} shapes")
    if len(set(shape_of)) == 1:
        out.append(f"the {c} {_plural(shape_of[0])}")
    return out


def _gref_shape_group(shape: str, n: int) -> list[str]:
    """Expressions for every object of ``shape`` when there are ``n`` >= 2 of them."""
    out = [f"all the {_plural(shape)}", f"the {_plural(shape)}", f"every {shape}"]
    if n in _COUNT_WORDS:
        out.append(f"{_COUNT_WORDS[n]} {_plural(shape)}")
    return out


def _gref_no_target(absent_colours: Sequence[str], absent_shapes: Sequence[str], present_colours: Sequence[str],
                    rng: np.random.Generator) -> list[str]:
    """Expressions that name nothing in the image: an absent palette colour / shape, or never-drawn words."""
    kind = int(rng.integers(3)) if absent_colours else 2
    if kind == 0 or (kind == 1 and not absent_shapes):
        c = str(rng.choice(list(absent_colours)))
        return [c, f"the {c} shape", f"the {c} one", f"all the {c} shapes"]
    if kind == 1:
        sh = str(rng.choice(list(absent_shapes)))
        return [f"the {sh}", f"all the {_plural(sh)}", f"the {_plural(sh)}"]
    c = str(rng.choice(_NEVER_COLOURS))
    sh = str(rng.choice(_NEVER_SHAPES))
    pc = str(rng.choice(list(present_colours)))
    return [f"the {c} {sh}", f"the {c} shape", f"the {pc} {sh}", f"all the {_plural(sh)}"]


def synthetic_grefcoco_sentences() -> list[str]:
    """Every sentence the gRefCOCO generator can produce (sorted, de-duplicated)."""
    out: set[str] = set()
    for c in COLOURS:
        for n in range(1, 5):
            for s in SHAPES:
                out.update(_gref_colour_group(c, [s] * n))  # mixed shapes give a subset of these
        out.update([c, f"the {c} shape", f"the {c} one", f"all the {c} shapes"])
        for sh in _NEVER_SHAPES:
            out.update([f"the {c} {sh}"])
    for s in SHAPES + _NEVER_SHAPES:
        for n in range(2, 5):
            out.update(_gref_shape_group(s, n))
        out.update([f"the {s}", f"all the {_plural(s)}", f"the {_plural(s)}"])
    for c in _NEVER_COLOURS:
        out.add(f"the {c} shape")
        for sh in _NEVER_SHAPES:
            out.add(f"the {c} {sh}")
    return sorted(out)


# -- "grounded": expressions that need the image ------------------------------------------------------
#
# Colours repeat within an image (drawn with replacement), so a colour word singles an object out only
# when that colour happens to be unique there. Each expression is built from what identifies its
# object *in this image* and tagged with the kind of evidence it needs (`EXPRESSION_TYPES`), so
# results can be broken down per type.

GROUNDED_COLOURS: tuple[str, ...] = ("red", "yellow", "green", "blue")
EXPRESSION_TYPES: tuple[str, ...] = (
    "colour",           # "the red one": its colour is unique in the image
    "shape",            # "the circle": its shape is unique
    "colour+shape",     # "the red circle": neither alone is unique, the pair is
    "position",         # "the shape on the left": extreme position among all objects
    "ordinal",          # "the second shape from the right": counting along x (3+ objects)
    "size",             # "the biggest shape": extreme area among all objects
    "colour+position",  # "the red one on the left": extreme position among the objects of its colour
    "shape+position",   # "the left circle": extreme position among the objects of its shape
    "colour+size",      # "the bigger red shape": extreme area among the objects of its colour
)
_POSITION_MARGIN = 0.08  # an extreme object leads the runner-up by >= this fraction of the image side
_SIZE_RATIO = 1.4  # "biggest" / "smallest": area ratio to the runner-up
# side -> (phrase, adjective, RefCOCOg phrase)
_SIDES = {"left": ("on the left", "left", "furthest to the left"),
          "right": ("on the right", "right", "furthest to the right"),
          "top": ("at the top", "top", "closest to the top"),
          "bottom": ("at the bottom", "bottom", "closest to the bottom")}


def _grounded_templates(kind: str, style: str, *, c: str = "", s: str = "", side: str = "",
                        big: bool = True) -> list[str]:
    """Sentences of one expression type. style "unc" / "plus" / "umd" as in `_expressions`; the
    RefCOCO+ style has no position or ordinal words (the caller does not ask for them)."""
    ph, adj, far = _SIDES.get(side, ("", "", ""))
    most, more = ("biggest", "bigger") if big else ("smallest", "smaller")
    if style == "umd":
        return {
            "colour": [f"the shape that is {c}", f"a {c} coloured shape"],
            "shape": [f"the shape that is a {s}", f"a {s} in the picture"],
            "colour+shape": [f"the {c} coloured {s}", f"a {s} that is {c}"],
            "position": [f"the shape that is {far}", f"the shape {ph} of the picture"],
            "ordinal": [f"the second shape counting from the {side}", f"the shape that is second from the {side}"],
            "size": [f"the {most} shape in the picture", f"the shape that is {more} than all others"],
            "colour+position": [f"the {c} shape that is {far}", f"of the {c} shapes, the one {ph}"],
            "shape+position": [f"the {s} that is {far}", f"of the {s}s, the one {ph}"],
            "colour+size": [f"the {more} of the {c} shapes", f"the {c} shape that is {more}"],
        }[kind]
    small = "big" if big else "small"
    return {
        "colour": [c, f"the {c} one", f"the {c} shape"],
        "shape": [s, f"the {s}"],
        "colour+shape": [f"the {c} {s}", f"{c} {s}"],
        "position": [f"the shape {ph}", f"the {adj} one", adj],
        "ordinal": [f"the second shape from the {side}", f"second from {side}"],
        "size": [f"the {most} shape", f"the {small} one", most],
        "colour+position": [f"the {c} one {ph}", f"the {adj} {c} shape", f"{adj} {c}"],
        "shape+position": [f"the {s} {ph}", f"the {adj} {s}", f"{adj} {s}"],
        "colour+size": [f"the {more} {c} shape", f"the {small} {c} one"],
    }[kind]


def _extreme_side(objs: list[dict], i: int, group: list[int], width: int, height: int) -> list[str]:
    """Sides ("left", "right", "top", "bottom") on which object ``i`` is the extreme of ``group``
    (indices into ``objs``, including ``i``) by at least the position margin."""
    others = [objs[j] for j in group if j != i]
    if not others:
        return []
    o, mx, my = objs[i], _POSITION_MARGIN * width, _POSITION_MARGIN * height
    out = []
    if min(p["cx"] for p in others) - o["cx"] >= mx:
        out.append("left")
    if o["cx"] - max(p["cx"] for p in others) >= mx:
        out.append("right")
    if min(p["cy"] for p in others) - o["cy"] >= my:
        out.append("top")
    if o["cy"] - max(p["cy"] for p in others) >= my:
        out.append("bottom")
    return out


def _extreme_size(objs: list[dict], i: int, group: list[int]) -> list[bool]:
    """[True] if object ``i`` is the biggest of ``group`` by `_SIZE_RATIO`, [False] if the smallest."""
    others = [objs[j]["area"] for j in group if j != i]
    if not others:
        return []
    a = objs[i]["area"]
    return [True] if a >= _SIZE_RATIO * max(others) else [False] if min(others) >= _SIZE_RATIO * a else []


def _ordinal_sides(objs: list[dict], i: int, width: int) -> list[str]:
    """"left" if object ``i`` is second from the left along x (>= 3 objects, both neighbours at least
    the position margin away), "right" if second from the right."""
    if len(objs) < 3:
        return []
    order = sorted(range(len(objs)), key=lambda j: objs[j]["cx"])
    xs = [objs[j]["cx"] for j in order]
    gaps_ok = [xs[k + 1] - xs[k] >= _POSITION_MARGIN * width for k in range(len(xs) - 1)]
    k = order.index(i)
    out = []
    if k == 1 and gaps_ok[0] and gaps_ok[1]:
        out.append("left")
    if k == len(objs) - 2 and gaps_ok[k - 1] and gaps_ok[k]:
        out.append("right")
    return out


def grounded_candidates(objs: list[dict], i: int, style: str, width: int, height: int) -> dict[str, list[str]]:
    """Expression type -> sentences that identify object ``i`` among ``objs`` (dicts with colour,
    shape, cx, cy, area) and no other object of the image. Types without a sentence are absent."""
    o = objs[i]
    c, s = o["colour"], o["shape"]
    same_c = [j for j, p in enumerate(objs) if p["colour"] == c]
    same_s = [j for j, p in enumerate(objs) if p["shape"] == s]
    pair_unique = sum(p["colour"] == c and p["shape"] == s for p in objs) == 1
    located = style != "plus"  # RefCOCO+ has no location words
    out: dict[str, list[str]] = {}

    def add(kind: str, **kw) -> None:
        out.setdefault(kind, []).extend(_grounded_templates(kind, style, c=c, s=s, **kw))

    if len(same_c) == 1:
        add("colour")
    if len(same_s) == 1:
        add("shape")
    if len(same_c) > 1 and len(same_s) > 1 and pair_unique:
        add("colour+shape")
    every = list(range(len(objs)))
    for big in _extreme_size(objs, i, every):
        add("size", big=big)
    if len(same_c) > 1:
        for big in _extreme_size(objs, i, same_c):
            add("colour+size", big=big)
    if located:
        for side in _extreme_side(objs, i, every, width, height):
            add("position", side=side)
        for side in _ordinal_sides(objs, i, width):
            add("ordinal", side=side)
        if len(same_c) > 1:
            for side in _extreme_side(objs, i, same_c, width, height):
                add("colour+position", side=side)
        if len(same_s) > 1:
            for side in _extreme_side(objs, i, same_s, width, height):
                add("shape+position", side=side)
    return out


def _pick_grounded(rng: np.random.Generator, cands: dict[str, list[str]], k: int) -> list[tuple[str, str]]:
    """Up to ``k`` (sentence, type) pairs, spread over the available types (round robin in a random
    type order, a random sentence of each)."""
    types = [t for t in EXPRESSION_TYPES if cands.get(t)]
    order = [types[j] for j in rng.permutation(len(types))]
    pools = {t: [cands[t][j] for j in rng.permutation(len(cands[t]))] for t in order}
    out: list[tuple[str, str]] = []
    while len(out) < k and any(pools.values()):
        for t in order:
            if pools[t] and len(out) < k:
                out.append((pools[t].pop(), t))
    return out


def grounded_sentences() -> list[str]:
    """Every sentence the "grounded" mode can produce (sorted, de-duplicated)."""
    out = set()
    for style in ("unc", "umd"):
        for kind in EXPRESSION_TYPES:
            for c in COLOURS:
                for s in SHAPES:
                    for side in _SIDES:
                        for big in (True, False):
                            out.update(_grounded_templates(kind, style, c=c, s=s, side=side, big=big))
    return sorted(out)


def _grounded_scene(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int,
                    colour_names: tuple[str, ...], shapes: tuple[str, ...],
                    repeat_colours: bool = True) -> tuple[int, int, list]:
    """Like `_scene`, but colours are drawn with replacement (unless ``repeat_colours`` is False) and
    sizes vary more (radius image_size/11 .. image_size/5.5), so colour, shape, position and size all
    matter."""
    w = image_size
    h = image_size if rng.random() < 0.5 else int(round(image_size * 0.75))
    n = int(rng.integers(min_objects, max_objects + 1))
    r_lo, r_hi = image_size / 11, image_size / 5.5
    distinct = None if repeat_colours else [str(c) for c in rng.choice(list(colour_names), size=n, replace=False)]
    objs: list[tuple[str, str, float, float, float]] = []
    for k in range(n):
        if distinct is None:
            colour, shape = str(rng.choice(list(colour_names))), str(rng.choice(list(shapes)))
        else:
            colour, shape = distinct[k], str(rng.choice(list(shapes)))
        for _ in range(100):
            r = float(rng.uniform(r_lo, r_hi))
            cx = float(rng.uniform(r + 1, w - r - 2))
            cy = float(rng.uniform(r + 1, h - r - 2))
            if all(math.hypot(cx - ox, cy - oy) > r + orad + 2 for _, _, ox, oy, orad in objs):
                objs.append((colour, shape, cx, cy, r))
                break
    if len(objs) < 2:
        raise RuntimeError(f"could not place 2 shapes in a {w}x{h} image")
    return h, w, objs


def expression_types(refs: list[dict]) -> dict[int, str]:
    """sent_id -> expression type for refs written by the "grounded" mode (each sentence dict carries
    a ``"type"`` from `EXPRESSION_TYPES`; sentences without one are left out)."""
    return {int(s["sent_id"]): str(s["type"]) for r in refs for s in r["sentences"] if "type" in s}


# -- scenes -----------------------------------------------------------------------------------------

def _polygon(shape: str, cx: float, cy: float, r: float) -> list[float]:
    if shape == "circle":
        pts = [(cx + r * math.cos(2 * math.pi * k / 32), cy + r * math.sin(2 * math.pi * k / 32)) for k in range(32)]
    elif shape == "square":
        h = r / math.sqrt(2) * 1.15
        pts = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    else:  # triangle, apex up
        pts = [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    return [round(v, 2) for p in pts for v in p]


def shape_mask(shape: str, cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    """The pixels of a `SHAPES` shape of radius ``r`` centred at (cx, cy): its polygon (`_polygon`)
    rasterised by pycocotools, as the annotations are decoded. -> (height, width) uint8 in {0, 1}."""
    from pycocotools import mask as mask_utils

    poly = _polygon(shape, cx, cy, r)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([poly], height, width)))


def _scene(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int,
           colour_names: tuple[str, ...] = tuple(COLOURS), shapes: tuple[str, ...] = SHAPES,
           repeat_colours: bool = False) -> tuple[int, int, list]:
    """(height, width, objects [(colour, shape, cx, cy, r)]), non-overlapping, distinct colours unless
    ``repeat_colours`` (the gRefCOCO scenes)."""
    w = image_size
    h = image_size if rng.random() < 0.5 else int(round(image_size * 0.75))
    n = int(rng.integers(min_objects, max_objects + 1))
    colours = rng.choice(list(colour_names), size=n, replace=repeat_colours)
    r_lo, r_hi = image_size / 10, image_size / 6
    objs: list[tuple[str, str, float, float, float]] = []
    for colour in colours:
        for _ in range(100):
            r = float(rng.uniform(r_lo, r_hi))
            cx = float(rng.uniform(r + 1, w - r - 2))
            cy = float(rng.uniform(r + 1, h - r - 2))
            if all(math.hypot(cx - ox, cy - oy) > r + orad + 2 for _, _, ox, oy, orad in objs):
                objs.append((str(colour), str(rng.choice(shapes)), cx, cy, r))
                break
    if len(objs) < min(2, min_objects):  # pathological parameters; never with the defaults
        raise RuntimeError(f"could not place {min_objects} shapes in a {w}x{h} image")
    return h, w, objs


def _relations(objs: list, areas: list[int]) -> list[tuple[str, str | None]]:
    """(where, size) per object: extreme position / extreme area among the image's objects."""
    xs, ys = [o[2] for o in objs], [o[3] for o in objs]
    out = []
    for i in range(len(objs)):
        if xs[i] == min(xs):
            where = "left"
        elif xs[i] == max(xs):
            where = "right"
        elif ys[i] == min(ys):
            where = "top"
        elif ys[i] == max(ys):
            where = "bottom"
        else:
            where = "middle"
        size = "big" if areas[i] == max(areas) else "small" if areas[i] == min(areas) else None
        out.append((where, size))
    return out


def _segmentation(mask: np.ndarray, poly: list[float], kind: int) -> Any:
    from pycocotools import mask as mask_utils

    if kind == 0:
        return [poly]
    rle = mask_utils.encode(np.asfortranarray(mask))
    if kind == 1:  # compressed RLE (string counts)
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    # uncompressed RLE: run lengths in column-major order, starting with zeros
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _split_of(index: int, num_train: int, num_val: int, num_test: int, split_by: str) -> str:
    if index < num_train:
        return "train"
    if index < num_train + num_val:
        return "val"
    if split_by == "umd":
        return "test"
    return "testA" if index - num_train - num_val < (num_test + 1) // 2 else "testB"


# -- gRefCOCO ---------------------------------------------------------------------------------------

def _write_grefcoco(root: str | Path, img_dir: Path, *, seed: int, num_train: int, num_val: int, num_test: int,
                    image_size: int, min_objects: int, max_objects: int, sentences_per_ref: int,
                    colour_names: tuple[str, ...], shape_names: tuple[str, ...]) -> tuple[dict, set[str], int]:
    """Scenes with repeatable colours, their images, and ``grefcoco/{instances.json, grefs(unc).json}``.
    Returns (per-split stats, sentences, number of images)."""
    from PIL import Image

    from evf_sam.data.grefer import NO_TARGET, write_grefer

    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    images, annotations, refs = [], [], []
    sentences: set[str] = set()
    per_split: dict[str, dict[str, Any]] = {}
    ann_id, ref_id, sent_id = 1, 1, 1
    for idx in range(num_train + num_val + num_test):
        rng = np.random.default_rng([int(seed), idx, 7])  # own stream: the REFER scenes are unchanged
        h, w, objs = _scene(rng, image_size, min_objects, max_objects, colour_names, shape_names, repeat_colours=True)
        image_id = GREF_IMAGE_ID0 + idx + 1
        canvas = np.empty((h, w, 3), np.uint8)
        canvas[:] = _BACKGROUND
        objects = []  # (ann_id, colour, shape)
        for colour, shape, cx, cy, r in objs:
            poly = _polygon(shape, cx, cy, r)
            m = shape_mask(shape, cx, cy, r, h, w)
            canvas[m.astype(bool)] = COLOURS[colour]
            ys, xs = np.nonzero(m)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape) + 1,
                                "segmentation": _segmentation(m, poly, ann_id % 3), "bbox": bbox,
                                "area": int(m.sum()), "iscrowd": 0})
            objects.append((ann_id, colour, shape))
            ann_id += 1
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(canvas).save(buf, format="JPEG", quality=95)
        (img_dir / file_name).write_bytes(buf.getvalue())
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})

        split = _split_of(idx, num_train, num_val, num_test, "unc")
        targets: list[tuple[list[int], list[str]]] = []  # (ann ids, candidate expressions)
        for colour in sorted({c for _, c, _ in objects}):
            group = [(a, sh) for a, c, sh in objects if c == colour]
            targets.append(([a for a, _ in group], _gref_colour_group(colour, [sh for _, sh in group])))
        for shape in sorted({sh for _, _, sh in objects}):
            group = [a for a, _, sh in objects if sh == shape]
            if len(group) >= 2:
                targets.append((group, _gref_shape_group(shape, len(group))))
        present = {c for _, c, _ in objects}
        absent_c = [c for c in colour_names if c not in present]
        absent_s = [x for x in shape_names if x not in {sh for _, _, sh in objects}]
        targets.append(([NO_TARGET], _gref_no_target(absent_c, absent_s, sorted(present), rng)))
        st = per_split.setdefault(split, {"refs": 0, "sentences": 0, "images": 0, "multi_target_refs": 0,
                                          "no_target_refs": 0})
        st["images"] += 1
        for ids, cands in targets:
            pick = rng.choice(len(cands), size=min(sentences_per_ref, len(cands)), replace=False)
            sents = []
            for j in sorted(int(p) for p in pick):
                t = cands[j]
                sents.append({"sent_id": sent_id, "sent": t, "raw": t[0].upper() + t[1:], "tokens": t.split()})
                sent_id += 1
                sentences.add(t)
            cats = [] if ids == [NO_TARGET] else sorted({SHAPES.index(sh) + 1 for a, _, sh in objects if a in ids})
            refs.append({"ref_id": ref_id, "ann_id": ids, "image_id": image_id, "category_id": cats, "split": split,
                         "file_name": file_name, "sent_ids": [x["sent_id"] for x in sents], "sentences": sents})
            ref_id += 1
            st["refs"] += 1
            st["sentences"] += len(sents)
            st["multi_target_refs"] += int(len(ids) > 1)
            st["no_target_refs"] += int(ids == [NO_TARGET])
    write_grefer(root, images, annotations, categories, refs)
    return per_split, sentences, len(images)


# -- the dataset ------------------------------------------------------------------------------------

def _is_done(base: Path, params: dict) -> dict | None:
    p = base / MANIFEST
    if not p.is_file():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if m.get("params") != params:
        return None
    img_dir = base / IMAGE_DIRS["refcoco"]
    needed = [base / d / f for d, b in _DATASETS for f in ("instances.json", f"refs({b}).p")]
    if params.get("grefcoco"):
        needed += [base / "grefcoco" / "instances.json", base / "grefcoco" / "grefs(unc).json"]
    if not all(f.is_file() for f in needed):
        return None
    if sum(1 for _ in img_dir.glob("COCO_train2014_*.jpg")) != m["stats"]["images"]:
        return None
    return m["stats"]


def make_synthetic_refer(root: str | Path, *, seed: int = 0, num_train: int = 1000, num_val: int = 50,
                         num_test: int = 100, image_size: int = 128, min_objects: int = 2, max_objects: int = 4,
                         sentences_per_ref: int = 3, colours: Sequence[str] | None = None,
                         shapes: Sequence[str] | None = None, difficulty: str = "easy",
                         expression_types: Sequence[str] | None = None, repeat_colours: bool = True,
                         grefcoco: bool = False, force: bool = False) -> dict[str, Any]:
    """Writes (or reuses) the synthetic REFER datasets under ``<root>/refer_seg``; returns stats.

    Task knobs: ``min_objects`` / ``max_objects`` per image, ``colours`` (a subset of `COLOURS`,
    default all; each image uses distinct ones), ``shapes`` (a subset of `SHAPES`), ``difficulty``
    ("easy": every expression names the colour; "colour_only": only "red" / "the red one" / "the
    red circle"; "hard": adds colour-free expressions that still identify the object, see
    `_expressions`; "grounded": colours repeat within an image (default palette `GROUNDED_COLOURS`)
    and each object is referred to by what singles it out there, colour, shape, position, ordinal,
    size or a combination, each sentence dict tagged with its ``"type"`` (`EXPRESSION_TYPES`); an
    object that nothing singles out in a dataset's style has no ref there), ``expression_types``
    ("grounded" only: the subset of `EXPRESSION_TYPES` to write, default all), ``repeat_colours``
    ("grounded" only; False: distinct colours per image, e.g. with expression_types shape / position /
    ordinal / size, expressions that never name the colour that would single the object out),
    ``sentences_per_ref``, ``image_size``. ``grefcoco``: also write the gRefCOCO look-alike (module
    docstring; same split sizes, its own scenes and images).

    Images 0..num_train-1 are train, then num_val val, then num_test test images (unc: first half
    testA, second half testB; umd: test); the same image has the same split in every dataset.
    Returns {"root", "images", "objects", "reused", "datasets": {"refcoco|unc": {split: {"refs",
    "sentences", "images"}}}}.
    """
    grounded = difficulty == "grounded"
    default_colours = GROUNDED_COLOURS if grounded else tuple(COLOURS)
    colour_names = default_colours if colours is None else tuple(str(c) for c in colours)
    shape_names = SHAPES if shapes is None else tuple(str(s) for s in shapes)
    if not colour_names or set(colour_names) - set(COLOURS) or len(set(colour_names)) != len(colour_names):
        raise ValueError(f"colours must be distinct names from {list(COLOURS)}, got {list(colour_names)}")
    if not shape_names or set(shape_names) - set(SHAPES) or len(set(shape_names)) != len(shape_names):
        raise ValueError(f"shapes must be distinct names from {list(SHAPES)}, got {list(shape_names)}")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {list(DIFFICULTIES)}, got {difficulty!r}")
    if expression_types is not None:
        expression_types = tuple(str(t) for t in expression_types)
        if not grounded:
            raise ValueError("expression_types applies to difficulty='grounded' only")
        if not expression_types or set(expression_types) - set(EXPRESSION_TYPES):
            raise ValueError(f"expression_types must be a non-empty subset of {list(EXPRESSION_TYPES)}, "
                             f"got {list(expression_types)}")
    if grounded:
        hi = 6 if repeat_colours else min(6, len(colour_names))
        if not 2 <= min_objects <= max_objects <= hi:
            raise ValueError(f"need 2 <= min_objects <= max_objects <= {hi}, got {min_objects}, {max_objects}")
    elif not repeat_colours:
        raise ValueError("repeat_colours=False applies to difficulty='grounded' only (the others never repeat)")
    elif not 2 <= min_objects <= max_objects <= len(colour_names):
        raise ValueError(f"need 2 <= min_objects <= max_objects <= {len(colour_names)} (distinct colours per "
                         f"image), got {min_objects}, {max_objects}")
    if min(num_train, num_val, num_test) < 0 or num_train + num_val + num_test == 0:
        raise ValueError("num_train / num_val / num_test must be >= 0 and not all 0")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    from PIL import Image

    params = dict(version=_VERSION, seed=int(seed), num_train=int(num_train), num_val=int(num_val),
                  num_test=int(num_test), image_size=int(image_size), min_objects=int(min_objects),
                  max_objects=int(max_objects), sentences_per_ref=int(sentences_per_ref))
    if (colours, shapes, difficulty) != (None, None, "easy"):  # defaults keep older manifests valid
        params.update(colours=list(colour_names), shapes=list(shape_names), difficulty=difficulty)
    if grefcoco:  # off keeps older manifests valid
        params.update(grefcoco=True)
    if expression_types is not None:
        params.update(expression_types=[t for t in EXPRESSION_TYPES if t in expression_types])
    if not repeat_colours:
        params.update(repeat_colours=False)
    base = refer_dir(root)
    if not force:
        stats = _is_done(base, params)
        if stats is not None:
            return {**stats, "reused": True}

    # (re)build: refuse to clobber a REFER root that we did not write
    ours = (base / MANIFEST).is_file() or (base / _STARTED).is_file()
    if not ours and any((base / d).exists() for d, _ in (*_DATASETS, ("grefcoco", "unc"))):
        raise FileExistsError(f"{base} holds REFER data that was not written by the synthetic generator; "
                              "use another --root")
    base.mkdir(parents=True, exist_ok=True)
    (base / MANIFEST).unlink(missing_ok=True)
    atomic_write_bytes(base / _STARTED, json.dumps({"params": params}).encode())
    for d, _ in (*_DATASETS, ("grefcoco", "unc")):
        shutil.rmtree(base / d, ignore_errors=True)
    img_dir = base / IMAGE_DIRS["refcoco"]
    shutil.rmtree(img_dir, ignore_errors=True)
    img_dir.mkdir(parents=True, exist_ok=True)

    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    images, annotations = [], []
    objects_per_image: list[list[dict]] = []  # per image: {ann_id, colour, shape, where, size, cx, cy, area}
    sizes: list[tuple[int, int]] = []  # per image: (width, height)
    n_total = num_train + num_val + num_test
    ann_id = 1
    for idx in range(n_total):
        rng = np.random.default_rng([int(seed), idx])
        if grounded:
            h, w, objs = _grounded_scene(rng, image_size, min_objects, max_objects, colour_names, shape_names,
                                         repeat_colours)
        else:
            h, w, objs = _scene(rng, image_size, min_objects, max_objects, colour_names, shape_names)
        image_id = idx + 1
        canvas = np.empty((h, w, 3), np.uint8)
        canvas[:] = _BACKGROUND
        polys, masks = [], []
        for colour, shape, cx, cy, r in objs:
            poly = _polygon(shape, cx, cy, r)
            m = shape_mask(shape, cx, cy, r, h, w)
            canvas[m.astype(bool)] = COLOURS[colour]
            polys.append(poly)
            masks.append(m)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        buf = io.BytesIO()
        Image.fromarray(canvas).save(buf, format="JPEG", quality=95)
        (img_dir / file_name).write_bytes(buf.getvalue())
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        sizes.append((w, h))
        areas = [int(m.sum()) for m in masks]
        rel = _relations(objs, areas)
        info = []
        for k, ((colour, shape, cx, cy, r), poly, m) in enumerate(zip(objs, polys, masks)):
            ys, xs = np.nonzero(m)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            kind = ann_id % 3
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": SHAPES.index(shape) + 1,
                                "segmentation": _segmentation(m, poly, kind), "bbox": bbox, "area": areas[k],
                                "iscrowd": int(kind == 2)})
            info.append({"ann_id": ann_id, "colour": colour, "shape": shape, "where": rel[k][0], "size": rel[k][1],
                         "cx": cx, "cy": cy, "area": areas[k]})
            ann_id += 1
        objects_per_image.append(info)

    all_sentences: set[str] = set()
    ds_stats: dict[str, dict] = {}
    for d_index, (dataset, split_by) in enumerate(_DATASETS):
        style = {"refcoco": "unc", "refcoco+": "plus", "refcocog": "umd"}[dataset]
        refs, ref_id, sent_id = [], 1, 1
        per_split: dict[str, dict[str, Any]] = {}
        for idx, info in enumerate(objects_per_image):
            split = _split_of(idx, num_train, num_val, num_test, split_by)
            rng = np.random.default_rng([int(seed), idx, 1000 + d_index])
            image_id = idx + 1
            st = per_split.setdefault(split, {"refs": 0, "sentences": 0, "images": set()})
            for k, o in enumerate(info):
                sents = []
                if grounded:
                    cands = grounded_candidates(info, k, style, *sizes[idx])
                    if expression_types is not None:
                        cands = {t: v for t, v in cands.items() if t in expression_types}
                    for t, kind in _pick_grounded(rng, cands, sentences_per_ref):
                        sents.append({"sent_id": sent_id, "sent": t, "raw": t[0].upper() + t[1:], "tokens": t.split(),
                                      "type": kind})
                        sent_id += 1
                        all_sentences.add(t)
                    if not sents:  # nothing singles this object out in this dataset's style: no ref
                        continue
                else:
                    unique = sum(x["shape"] == o["shape"] for x in info) == 1
                    cands = _expressions(o["colour"], o["shape"], o["where"], o["size"], style, difficulty, unique)
                    pick = rng.choice(len(cands), size=min(sentences_per_ref, len(cands)), replace=False)
                    for j in sorted(int(p) for p in pick):
                        t = cands[j]
                        sents.append({"sent_id": sent_id, "sent": t, "raw": t[0].upper() + t[1:],
                                      "tokens": t.split()})
                        sent_id += 1
                        all_sentences.add(t)
                refs.append({"ref_id": ref_id, "ann_id": o["ann_id"], "image_id": image_id,
                             "category_id": SHAPES.index(o["shape"]) + 1, "split": split,
                             "file_name": f"COCO_train2014_{image_id:012d}_{o['ann_id']}.jpg",
                             "sent_ids": [s["sent_id"] for s in sents], "sentences": sents})
                ref_id += 1
                st["refs"] += 1
                st["sentences"] += len(sents)
                st["images"].add(image_id)
        write_refer(root, dataset, split_by, images, annotations, categories, refs)
        ds_stats[f"{dataset}|{split_by}"] = {s: {"refs": v["refs"], "sentences": v["sentences"],
                                                 "images": len(v["images"])} for s, v in per_split.items()}

    n_images = n_total
    if grefcoco:
        gstats, gsents, n_gref = _write_grefcoco(
            root, img_dir, seed=seed, num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size,
            min_objects=min_objects, max_objects=max_objects, sentences_per_ref=sentences_per_ref,
            colour_names=colour_names, shape_names=shape_names)
        ds_stats["grefcoco|unc"] = gstats
        all_sentences |= gsents
        n_images += n_gref
    atomic_write_bytes(base / "sentences.txt", ("\n".join(sorted(all_sentences)) + "\n").encode())
    stats = {"root": str(Path(root)), "images": n_images, "objects": len(annotations), "datasets": ds_stats}
    atomic_write_bytes(base / MANIFEST, json.dumps({"params": params, "stats": stats}, indent=2).encode())
    (base / _STARTED).unlink(missing_ok=True)
    return {**stats, "reused": False}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evf_sam.data.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="output root (refer_seg/ is created inside)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=50)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--min-objects", type=int, default=2)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--sentences-per-ref", type=int, default=3)
    p.add_argument("--colours", default=None, help=f"comma-separated subset of {','.join(COLOURS)}")
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {','.join(SHAPES)}")
    p.add_argument("--difficulty", default="easy", choices=DIFFICULTIES)
    p.add_argument("--grefcoco", action="store_true", help="also write the gRefCOCO look-alike (refer_seg/grefcoco)")
    p.add_argument("--expression-types", default=None,
                   help=f"grounded only: comma-separated subset of {','.join(EXPRESSION_TYPES)}")
    p.add_argument("--distinct-colours", action="store_true", help="grounded only: no colour twice in an image")
    p.add_argument("--force", action="store_true", help="rebuild even if a complete dataset exists")
    a = p.parse_args(argv)
    stats = make_synthetic_refer(a.root, seed=a.seed, num_train=a.num_train, num_val=a.num_val,
                                 num_test=a.num_test, image_size=a.image_size, min_objects=a.min_objects,
                                 max_objects=a.max_objects, sentences_per_ref=a.sentences_per_ref,
                                 colours=a.colours.split(",") if a.colours else None,
                                 shapes=a.shapes.split(",") if a.shapes else None, difficulty=a.difficulty,
                                 expression_types=a.expression_types.split(",") if a.expression_types else None,
                                 repeat_colours=not a.distinct_colours, grefcoco=a.grefcoco, force=a.force)
    print(f"{'reused' if stats['reused'] else 'wrote'} {stats['images']} images, {stats['objects']} objects "
          f"under {refer_dir(a.root)}")
    for name, splits in stats["datasets"].items():
        print("  " + name + ": " + ", ".join(f"{s} {v['refs']} refs / {v['sentences']} sentences / "
                                             f"{v['images']} images" for s, v in splits.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

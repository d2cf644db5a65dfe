"""evf_sam/visualize.py: outlines, distinct colours, legend, and an untouched image elsewhere (pixels)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from evf_sam.visualize import (DARK, LEGEND_BACKGROUND, LIGHT, MIN_LEGEND_WIDTH, PALETTE, contour_color, draw_masks,
                               mask_color, render_masks)

H, W = 120, 300


def _square(top: int, left: int, size: int, shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_palette_is_distinct_and_saturated():
    pal = np.asarray(PALETTE, float)
    assert len(PALETTE) >= 10
    dists = [np.abs(a - b).sum() for a, b in itertools.combinations(pal, 2)]
    assert min(dists) > 80  # no two colours within 80 (sum of |dR|, |dG|, |dB|) of each other
    assert all(max(c) - min(c) >= 120 for c in PALETTE)  # saturated: far from grey
    assert mask_color(len(PALETTE)) == PALETTE[0] and mask_color(1) == PALETTE[1]
    assert contour_color((255, 225, 25)) == DARK and contour_color((0, 130, 200)) == LIGHT


def test_square_outline_rings_and_tint(image):
    m = _square(20, 30, 40)
    c = np.asarray(PALETTE[0])
    out = draw_masks(image, m[None], line_width=2, contour=1)
    assert out.shape == image.shape and out.dtype == np.uint8
    # ring 0 (outermost px of the mask): contour colour; rings 1-2: the mask colour; inside: tint
    ring0 = m & ~_square(21, 31, 38)
    band = _square(21, 31, 38) & ~_square(23, 33, 34)
    inner = _square(23, 33, 34)
    assert (out[ring0] == contour_color(PALETTE[0])).all()
    assert (out[band] == c).all()
    want = np.rint(image[inner].astype(np.float64) * 0.55 + c * 0.45)
    assert np.abs(out[inner].astype(int) - want).max() <= 1
    assert np.array_equal(out[~m], image[~m])  # nothing drawn outside the mask


def test_perfect_mask_of_a_same_colour_shape_is_visible():
    """A blue square on a blue background, masked exactly, in the palette's blue: the flat tint
    changes nothing there, the outline must."""
    blue = mask_color(2)
    img = np.empty((H, W, 3), np.uint8)
    img[:] = blue
    m = _square(30, 100, 50)
    out = draw_masks(img, np.stack([np.zeros_like(m), np.zeros_like(m), m]))  # mask #2 -> blue
    boundary = m & ~_square(31, 101, 48)
    assert (np.abs(out[boundary].astype(int) - img[boundary]).max(axis=1) >= 100).all()
    assert (out[boundary] == LIGHT).all()


def test_masks_get_distinct_colours_and_outline_at_image_border(image):
    masks = np.stack([_square(0, 0, 30), _square(50, 100, 30), _square(60, 200, 40)])
    out = draw_masks(image, masks, line_width=2, contour=1)
    bands = [np.unique(out[_square(t + 1, l + 1, s - 2) & ~_square(t + 3, l + 3, s - 6)], axis=0)
             for t, l, s in ((0, 0, 30), (50, 100, 30), (60, 200, 40))]
    assert [b.tolist() for b in bands] == [[list(mask_color(i))] for i in range(3)]
    assert (out[0, :30] == contour_color(mask_color(0))).all()  # touching the top border: outlined there
    assert (out[:30, 0] == contour_color(mask_color(0))).all()


def test_later_tint_does_not_hide_earlier_outline(image):
    a, b = _square(10, 10, 60), _square(30, 30, 60)  # overlapping
    out = draw_masks(image, np.stack([a, b]), line_width=2, contour=1)
    ring_a = a & ~_square(11, 11, 58)
    ring_b = b & ~_square(31, 31, 58)
    assert (out[ring_b] == contour_color(mask_color(1))).all()  # drawn last, complete
    # a's outline inside b's interior (b's tint drawn first, then a's outline): still a's colours
    inside_b = ring_a & _square(35, 35, 50)
    assert inside_b.any() and (out[inside_b] == contour_color(mask_color(0))).all()


def test_render_layout_legend_and_untouched_image(image):
    masks = np.stack([_square(10, 10, 40), _square(60, 150, 50)])
    caps = ["the big red circle on the left", "a small blue square"]
    out = render_masks(image, masks, caps, [0.875, 0.25])
    assert out.dtype == np.uint8 and out.shape[1] == W and out.shape[0] > H
    union = masks.any(0)
    assert np.array_equal(out[:H][~union], image[~union])
    assert np.array_equal(out[:H], draw_masks(image, masks))
    legend = out[H:]
    rows = np.array_split(np.arange(legend.shape[0] - 1), 2)  # two equal caption rows (+ bottom padding)
    for i, r in enumerate(rows):
        row = legend[r]
        swatch = (row == mask_color(i)).all(-1)
        assert swatch.sum() >= 100  # a filled swatch of the mask's colour
        text = (row.astype(int).sum(-1) > 500) & ~swatch  # bright text pixels
        assert text.sum() > 50 and text.any(0)[row.shape[1] // 4:].any()  # caption text beside the swatch
        for j in range(2):
            if j != i:
                assert not (row == mask_color(j)).all(-1).any()
    # the background of the band is the legend colour
    assert (legend[:, -3:] == LEGEND_BACKGROUND).all()


def test_caption_text_is_drawn(image):
    masks = _square(10, 10, 40)[None]
    a = render_masks(image, masks, ["red circle"], [0.5])[H:]
    b = render_masks(image, masks, ["blue square on the right"], [0.5])[H:]
    c = render_masks(image, masks, ["red circle"], [0.9])[H:]
    assert a.shape == b.shape and not np.array_equal(a, b) and not np.array_equal(a, c)


def test_long_caption_is_cut_to_the_width(image):
    out = render_masks(image, _square(10, 10, 40)[None], ["word " * 200], [0.5])
    legend = out[H:]
    assert (legend[:, -4:] == LEGEND_BACKGROUND).all()  # the text stops before the right edge


def test_narrow_image_gets_a_readable_legend():
    img = np.full((37, 91, 3), 200, np.uint8)
    m = _square(5, 5, 20, shape=(37, 91))
    out = render_masks(img, m[None], ["a prompt"], [0.5])
    assert out.shape[1] == MIN_LEGEND_WIDTH
    assert np.array_equal(out[:37, :91][~m], img[~m])
    assert (out[:37, 91:] == LEGEND_BACKGROUND).all()


def test_empty_mask_and_no_legend(image):
    empty = np.zeros((1, H, W), bool)
    assert np.array_equal(render_masks(image, empty, legend=False), image)
    with_legend = render_masks(image, empty, ["nothing"], [0.1])
    assert np.array_equal(with_legend[:H], image) and with_legend.shape[0] > H


def test_bad_inputs(image):
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        render_masks(image, np.zeros((2, H, W + 1), bool))
    with pytest.raises(ValueError, match="2 masks but 1 captions"):
        render_masks(image, np.zeros((2, H, W), bool), ["x"])
    with pytest.raises(ValueError, match="uint8"):
        render_masks(image.astype(np.float32), np.zeros((1, H, W), bool))

"""evf_sam.preprocess equals the official recipe, written out here independently:
segment-anything's ResizeLongestSide + torch ops (SAM branch), the two square-mode paths of the
official inference.py (uint8 tensor interpolation) and eval.py (torchvision resize of a PIL image),
torchvision ToTensor / Resize (antialias=False) / Normalize (BEiT-3 branch). The official code itself
is compared in tests/test_official_parity.py."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision import transforms as T

from evf_sam.preprocess import (
    UnreadableImageError,
    beit3_preprocess,
    beit3_resize_normalize,
    load_image,
    masks_from_logits,
    overlay_mask,
    resize_mask_like_sam,
    sam_preprocess,
    sam_resize_square,
    sam_resized_shape,
)

SIZES = [(37, 91), (300, 17), (91, 37), (17, 300), (64, 64), (256, 256), (1, 5)]


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _official_sam(x: np.ndarray, size: int):
    """EVF-SAM inference.py's sam_preprocess (model_type 'ori'), with img_size = size."""
    x = ResizeLongestSide(size).apply_image(x)
    h, w = x.shape[:2]
    x = torch.from_numpy(x).permute(2, 0, 1).contiguous()
    x = (x - torch.Tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)) / torch.Tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    return F.pad(x, (0, size - w, 0, size - h)), (h, w)


def _official_beit(x: np.ndarray, size: int):
    t = T.Compose([T.ToTensor(), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=False),
                   T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])
    return t(x)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("size", [256, 1024])
def test_sam_branch_equals_official(hw, size):
    img = _image(*hw)
    want, want_hw = _official_sam(img, size)
    got, got_hw = sam_preprocess(img, size)
    assert got.dtype == torch.float32 and got.shape == (3, size, size)
    assert got_hw == want_hw and max(got_hw) == size
    assert torch.equal(got, want)
    assert got_hw == sam_resized_shape(*hw, size)
    assert (got[:, got_hw[0]:] == 0).all() and (got[:, :, got_hw[1]:] == 0).all()


def test_sam_target_size_rounds_half_up():
    # 1024 * 300 / 17 ... ; int(x + 0.5), not round-half-even, not floor
    for h, w in [(3, 2), (5, 2), (683, 1024), (1000, 1537)]:
        assert sam_resized_shape(h, w, 1024) == ResizeLongestSide.get_preprocess_shape(h, w, 1024)
    assert sam_resized_shape(3, 2, 5) == (5, 3)  # 2 * 5 / 3 = 3.33 -> 3 ; (5, 2) at 1024: 409.6 -> 410
    assert sam_resized_shape(5, 2, 1024) == (1024, 410)


@pytest.mark.parametrize("hw", SIZES + [(224, 224), (600, 800)])
@pytest.mark.parametrize("size", [224, 32])
def test_beit3_branch_equals_torchvision_no_antialias(hw, size):
    img = _image(*hw, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = _official_beit(img, size)
    got = beit3_preprocess(img, size)
    assert got.dtype == torch.float32 and got.shape == (3, size, size)
    assert torch.equal(got, want)
    # and it is F.interpolate bicubic, align_corners=False, antialias=False
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None]
    ref = (F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=False)[0] - 0.5) / 0.5
    assert torch.equal(got, ref)


def test_beit3_differs_from_antialiased_resize_when_shrinking():
    img = _image(600, 800, seed=2)
    anti = T.Compose([T.ToTensor(), T.Resize((224, 224), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.Normalize((0.5,) * 3, (0.5,) * 3)])(img)
    assert (beit3_preprocess(img) - anti).abs().max() > 1e-2


def test_batched_beit3_equals_per_image():
    imgs = [_image(50, 70, seed=s) for s in range(3)]
    x = torch.stack([torch.from_numpy(i).permute(2, 0, 1).float().div(255) for i in imgs])
    batched = beit3_resize_normalize(x, 32)
    for i, img in enumerate(imgs):
        assert torch.equal(batched[i], beit3_preprocess(img, 32))


@pytest.mark.parametrize("hw", [(37, 91), (300, 17), (256, 256)])
def test_mask_into_sam_frame(hw):
    rng = np.random.default_rng(3)
    mask = rng.random(hw) > 0.5
    out = resize_mask_like_sam(mask, 256)
    h, w = sam_resized_shape(*hw, 256)
    assert out.shape == (256, 256) and out.dtype == mask.dtype
    assert not out[h:].any() and not out[:, w:].any()
    # pixel-centre nearest, as torch's nearest-exact
    ref = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=(h, w), mode="nearest-exact")[0, 0]
    assert np.array_equal(out[:h, :w], ref.numpy() > 0.5)
    # and as PIL NEAREST on a uint8 mask
    pil = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
    assert np.array_equal(out[:h, :w], pil)


def test_mask_keeps_integer_dtype():
    m = np.zeros((10, 20), np.uint8)
    m[2:5, 3:9] = 1
    out = resize_mask_like_sam(m, 64)
    assert out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}


# -- load_image ------------------------------------------------------------------------------


def test_load_rgb_path_pil_array_agree(tmp_path):
    img = _image(13, 29)
    Image.fromarray(img).save(tmp_path / "a.png")
    for src in (tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(img), img):
        out = load_image(src)
        assert out.dtype == np.uint8 and out.shape == (13, 29, 3) and out.flags.c_contiguous
        assert np.array_equal(out, img)


def test_grayscale_and_rgba_and_palette(tmp_path):
    g = np.random.default_rng(0).integers(0, 256, (9, 11), dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    assert np.array_equal(load_image(tmp_path / "g.png"), np.repeat(g[:, :, None], 3, 2))
    assert np.array_equal(load_image(g), np.repeat(g[:, :, None], 3, 2))
    assert np.array_equal(load_image(g[:, :, None]), np.repeat(g[:, :, None], 3, 2))
    rgba = np.random.default_rng(1).integers(0, 256, (9, 11, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png"), rgba[:, :, :3])  # alpha dropped, no compositing
    assert np.array_equal(load_image(rgba), rgba[:, :, :3])
    p = Image.fromarray(_image(9, 11)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    p.save(tmp_path / "p.png")
    assert np.array_equal(load_image(tmp_path / "p.png"), np.asarray(p.convert("RGB")))
    bw = Image.fromarray(g > 128).convert("1")
    assert set(np.unique(load_image(bw))) <= {0, 255}


def test_sixteen_bit_and_float(tmp_path):
    a = np.array([[0, 257, 65535], [128, 32896, 1000]], dtype=np.uint16)
    want = np.repeat(np.array([[0, 1, 255], [0, 128, 4]], np.uint8)[:, :, None], 3, 2)
    assert np.array_equal(load_image(a), want)
    # as cv2.imread(IMREAD_COLOR) in the official inference: round-half-even(x / 256), saturated at 255
    assert np.array_equal(load_image(a), np.clip(np.rint(np.repeat(a[:, :, None], 3, 2) / 256), 0, 255))
    Image.fromarray(a).save(tmp_path / "x16.png")  # I;16 PNG
    assert Image.open(tmp_path / "x16.png").mode.startswith("I")
    assert np.array_equal(load_image(tmp_path / "x16.png"), want)
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert np.array_equal(load_image(f)[0, :, 0], [0, 128, 255])
    assert np.array_equal(load_image(np.array([[0.0, 100.4, 300.0]]))[0, :, 0], [0, 100, 255])
    assert np.array_equal(load_image(np.array([[True, False]]))[0, :, 0], [255, 0])
    assert np.array_equal(load_image(Image.fromarray(f, "F"))[0, :, 0], [0, 128, 255])
    eight = Image.fromarray(np.array([[0, 7, 255]], np.uint8)).convert("I")  # 8-bit values in a 32-bit image
    assert np.array_equal(load_image(eight)[0, :, 0], [0, 7, 255])
    wide = Image.fromarray(np.array([[0, 256, 65535, 70000]], np.int32), "I")
    assert np.array_equal(load_image(wide)[0, :, 0], [0, 1, 255, 255])
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.array([[np.nan]], np.float32))
    with pytest.raises(ValueError, match="channels last"):
        load_image(np.zeros((3, 8, 8, 2), np.uint8))


def test_exif_orientation_applied(tmp_path):
    img = _image(10, 20)
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    assert load_image(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"this is not an image")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    Image.fromarray(_image(64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match="trunc.png"):
        load_image(tmp_path / "trunc.png")
    with pytest.raises(IsADirectoryError):
        load_image(tmp_path)


def test_masks_and_overlay():
    logits = torch.tensor([[-1.0, 0.0, 2.0]])
    assert masks_from_logits(logits).tolist() == [[False, False, True]]
    img = np.full((2, 3, 3), 100, np.uint8)
    m = np.array([[True, False, False], [False, False, True]])
    out = overlay_mask(img, m)
    assert (out[~m] == 100).all()
    # the official visualisation: image * 0.5 + (50, 120, 220) * 0.5, truncated to uint8
    assert out[0, 0].tolist() == [75, 110, 160]


def test_batched_sam_normalize_pad_equals_per_image():
    from evf_sam.preprocess import sam_normalize_pad, sam_resize

    imgs = [sam_resize(_image(40, 30, seed=s), 64) for s in range(2)]  # same resized shape (64, 48)
    x = torch.stack([torch.from_numpy(i).permute(2, 0, 1) for i in imgs])  # (2, 3, 64, 48) uint8
    batched = sam_normalize_pad(x, 64)
    for i in range(2):
        assert torch.equal(batched[i], sam_preprocess(_image(40, 30, seed=i), 64)[0])


def test_read_only_input_no_warning():
    img = _image(20, 30)
    img.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        beit3_preprocess(img, 32)
        sam_preprocess(img, 64)
    with pytest.raises(TypeError, match="Tensor"):
        load_image(torch.zeros(3, 4, 4))


_MEAN = torch.Tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
_STD = torch.Tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)


def _official_square_inference(x: np.ndarray, size: int) -> torch.Tensor:
    """EVF-SAM inference.py's sam_preprocess, model_type 'effi' / 'sam2', with img_size = size."""
    x = torch.from_numpy(x).permute(2, 0, 1).contiguous()
    x = F.interpolate(x.unsqueeze(0), (size, size), mode="bilinear", align_corners=False).squeeze(0)
    return (x - _MEAN) / _STD


def _official_square_eval(x: np.ndarray, size: int) -> torch.Tensor:
    """EVF-SAM utils/dataset.py: Resize(size).apply_image, then ValDataset.preprocess (no padding)."""
    from torchvision.transforms.functional import resize, to_pil_image

    x = np.array(resize(to_pil_image(x), (size, size), antialias=None))
    return (torch.from_numpy(x).permute(2, 0, 1).contiguous() - _MEAN) / _STD


@pytest.mark.parametrize("hw", SIZES + [(1200, 700)])
def test_square_paths_equal_official_inference_and_eval(hw):
    img = _image(*hw, seed=sum(hw))
    size = 256
    inf, inf_hw = sam_preprocess(img, size, "square", pipeline="inference")
    ev, ev_hw = sam_preprocess(img, size, "square", pipeline="eval")
    assert inf_hw == ev_hw == (size, size)  # the image covers the whole frame
    assert torch.equal(inf, _official_square_inference(img, size))
    assert torch.equal(ev, _official_square_eval(img, size))
    # both are normalised uint8 images: the interpolation result is rounded before normalising
    for x in (inf, ev):
        grey = x * _STD + _MEAN
        assert torch.allclose(grey, grey.round(), atol=1e-3) and grey.min() >= -1e-3 and grey.max() <= 255 + 1e-3
    r = sam_resize_square(img, size, "inference")
    assert r.dtype == torch.uint8 and r.shape == (3, size, size)
    assert sam_resize_square(img, size, "eval").shape == (size, size, 3)
    if hw in ((37, 91), (300, 17), (1200, 700)):  # no longest-side resize first (what this module did before)
        old = F.interpolate(_official_sam(img, size)[0][None, :, :sam_resized_shape(*hw, size)[0],
                                                        :sam_resized_shape(*hw, size)[1]], (size, size),
                            mode="bilinear", align_corners=False)[0]
        assert not torch.equal(inf, old)


def test_square_paths_differ_and_need_a_name():
    img = _image(600, 250, seed=3)
    inf = sam_preprocess(img, 256, "square", pipeline="inference")[0]
    ev = sam_preprocess(img, 256, "square", pipeline="eval")[0]
    assert (inf - ev).abs().max() * 58 > 5  # shrinking: antialiased PIL vs plain bilinear, > 5 grey levels
    with pytest.raises(ValueError, match="needs pipeline='inference'"):
        sam_preprocess(img, 256, "square")
    with pytest.raises(ValueError, match="pipeline='train'"):
        sam_preprocess(img, 256, "pad", pipeline="train")
    for pipeline in (None, "inference", "eval"):  # SAM-1: one official path
        assert torch.equal(sam_preprocess(img, 256, "pad", pipeline=pipeline)[0], _official_sam(img, 256)[0])

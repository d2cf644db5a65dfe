"""`evf-sam predict` end to end on a tiny official-format checkpoint, in process; bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from evf_sam.cli import main
from evf_sam.predictor import EvfSamPredictor
from evf_sam.rle import decode_rle
from evf_sam.testing import build_tiny_model, make_tokenizer, write_official_checkpoint
from evf_sam.visualize import render_masks

PROMPTS = ["the big red circle on the left", "a small blue square"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = make_tokenizer(root / "tok")
    return write_official_checkpoint(root / "ckpt", build_tiny_model(seed=0), tok)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "in" / "a.png"
    b = tmp_path / "in" / "b.jpg"
    a.parent.mkdir()
    Image.fromarray(rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 256, (60, 20, 3), dtype=np.uint8)).save(b, quality=95)
    return [a, b]


def _predict(ckpt, out, *extra):
    return main(["predict", "--checkpoint", str(ckpt), "--output", str(out), "--device", "cpu", *extra])


def test_end_to_end(ckpt, images, tmp_path):
    out = tmp_path / "out"
    args = ["--image", *map(str, images), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1]]
    assert _predict(ckpt, out, *args) == 0
    summary = json.loads((out / "predictions.json").read_text())
    recs = summary["predictions"]
    assert len(recs) == 4 and summary["precision"] == "fp32"
    assert [(r["image"], r["prompt"]) for r in recs] == [(str(i), p) for i in images for p in PROMPTS]
    predictor = EvfSamPredictor.from_pretrained(ckpt)
    for img in images:
        want = predictor(str(img), PROMPTS)
        rgb = np.asarray(Image.open(img).convert("RGB"))
        for j, r in enumerate(x for x in recs if x["image"] == str(img)):
            mask = np.asarray(Image.open(out / r["mask"]))
            assert mask.shape == rgb.shape[:2] and set(np.unique(mask)) <= {0, 255}
            assert np.array_equal(mask == 255, want.masks[j].numpy())
            assert r["area"] == int(want.masks[j].sum())
            assert r["score"] == pytest.approx(float(want.scores[j]), abs=1e-5)
        # one combined overlay per image: evf_sam.visualize.render_masks of all its masks, captioned
        mine = [x for x in recs if x["image"] == str(img)]
        assert len({r["overlay"] for r in mine}) == 1
        overlay = np.asarray(Image.open(out / mine[0]["overlay"]))
        expected = render_masks(rgb, want.masks.numpy(), PROMPTS, [r["score"] for r in mine])
        assert np.array_equal(overlay, expected)
        # and the COCO RLE file beside it decodes to the same masks
        rle = json.loads((out / mine[0]["rle"]).read_text())
        assert [a["prompt"] for a in rle["annotations"]] == PROMPTS
        for a, m in zip(rle["annotations"], want.masks.numpy()):
            assert np.array_equal(decode_rle(a["segmentation"]), m)
    # written in place: no temporary file or directory left, in the output or next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_manifest_groups_by_image(ckpt, images, tmp_path):
    man = tmp_path / "in" / "jobs.jsonl"
    lines = [{"image": "a.png", "prompt": PROMPTS[0]}, {"image": str(images[1]), "prompt": PROMPTS[1]},
             {"image": "a.png", "prompt": PROMPTS[1]}]
    man.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    out = tmp_path / "out"
    assert _predict(ckpt, out, "--manifest", str(man), "--precision", "bf16") == 0
    recs = json.loads((out / "predictions.json").read_text())["predictions"]
    assert [(r["image"].rsplit("/", 1)[-1], r["prompt"]) for r in recs] == [
        ("a.png", PROMPTS[0]), ("a.png", PROMPTS[1]), ("b.jpg", PROMPTS[1])]
    assert all((out / r["mask"]).is_file() and (out / r["overlay"]).is_file() for r in recs)


def _assert_failed(rc, capsys, tmp_path, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("evf-sam: error: ") and "\n" not in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_missing_image(ckpt, images, tmp_path, capsys):
    rc = _predict(ckpt, tmp_path / "out", "--image", str(images[0]), str(tmp_path / "nope.png"), "--prompt", "x")
    _assert_failed(rc, capsys, tmp_path, "nope.png", "not found")


def test_corrupt_image(ckpt, images, tmp_path, capsys):
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rc = _predict(ckpt, tmp_path / "out", "--image", str(images[0]), str(bad), "--prompt", "x")
    _assert_failed(rc, capsys, tmp_path, "bad.png")


def test_empty_prompt(ckpt, images, tmp_path, capsys):
    rc = _predict(ckpt, tmp_path / "out", "--image", str(images[0]), "--prompt", "ok", "--prompt", "   ")
    _assert_failed(rc, capsys, tmp_path, "empty prompt")


def test_missing_weights(ckpt, images, tmp_path, capsys):
    import shutil

    broken = tmp_path / "ckpt"
    shutil.copytree(ckpt, broken)
    (broken / "pytorch_model.bin").unlink()
    rc = _predict(broken, tmp_path / "out", "--image", str(images[0]), "--prompt", "x")
    _assert_failed(rc, capsys, tmp_path, "no weights", "pytorch_model.bin")


def test_missing_checkpoint_dir(images, tmp_path, capsys):
    rc = _predict(tmp_path / "nockpt", tmp_path / "out", "--image", str(images[0]), "--prompt", "x")
    _assert_failed(rc, capsys, tmp_path, "nockpt", "not found")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only errors")
def test_device_errors(ckpt, images, tmp_path, capsys):
    base = ["--image", str(images[0]), "--prompt", "x"]
    _assert_failed(_predict(ckpt, tmp_path / "out", *base, "--precision", "fp16"), capsys, tmp_path, "fp16")
    rc = main(["predict", "--checkpoint", str(ckpt), "--output", str(tmp_path / "out"), "--device", "cuda", *base])
    _assert_failed(rc, capsys, tmp_path, "CUDA is not available")


def test_failure_leaves_existing_output_untouched(ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = _predict(ckpt, out, "--image", str(tmp_path / "nope.png"), "--prompt", "x")
    assert rc == 2 and [p.name for p in out.iterdir()] == ["keep.txt"]


def test_mask_choice_follows_the_checkpoint_unless_given(tmp_path, images):
    """Default: the checkpoint's multimask_output (official: best of 3 for EVF-SAM2, single mask otherwise)."""
    tok = make_tokenizer(tmp_path / "tok")
    sam2 = write_official_checkpoint(tmp_path / "sam2", build_tiny_model(seed=0, sam_variant="sam2_tiny"), tok)
    predictor = EvfSamPredictor.from_pretrained(sam2)
    for extra, multimask in (((), True), (("--no-multimask",), False), (("--multimask",), True)):
        out = tmp_path / f"out{len(extra)}{multimask}"
        assert _predict(sam2, out, "--image", str(images[0]), "--prompt", PROMPTS[0], *extra) == 0
        summary = json.loads((out / "predictions.json").read_text())
        assert summary["multimask_output"] is multimask
        want = predictor(str(images[0]), PROMPTS[:1], multimask_output=multimask).masks[0].numpy()
        assert np.array_equal(np.asarray(Image.open(out / summary["predictions"][0]["mask"])) == 255, want)

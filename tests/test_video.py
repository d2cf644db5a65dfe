"""Text-prompted video segmentation (evf_sam/video.py, ``evf-sam predict-video``).

* official parity: the seeded, prompt-sensitive EVF-SAM2 parity weights (Hiera-T + BEiT-3-Base) on a
  4-frame 54 x 96 JPEG clip reproduce, frame by frame, the logits of the official inference_video.py
  (tests/fixtures/official/parity_sam2_video.pt, made by scripts/make_official_video_golden.py)
  within 1e-3; another prompt does not;
* several prompts are tracked independently (each gets what it gets alone); a prompt frame > 0
  tracks forward and then backward;
* the CLI writes per-frame mask PNGs, an overlay video and a JSON summary, atomically, and rejects
  bad input before loading anything it does not need.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

if importlib.util.find_spec("sam2") is None:  # the video predictor is Meta's sam2 package's
    pytest.skip("Meta's sam2 package is not installed", allow_module_level=True)

from evf_sam.cli import main  # noqa: E402
from evf_sam.preprocess import beit3_preprocess  # noqa: E402
from evf_sam.testing import (build_tiny_model, force_object_present, make_tokenizer, video_clip,  # noqa: E402
                             write_official_checkpoint)
from evf_sam.video import (EvfSam2VideoPredictor, encode_overlay_video, load_video,  # noqa: E402
                           write_video_outputs)

PROMPTS = ["the big red circle on the left", "a small blue square"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("video_tok") / "tok")


@pytest.fixture(scope="module")
def sam2_ckpt(tmp_path_factory, tok) -> Path:
    """A tiny random EVF-SAM2 whose object-score head says "present" (`force_object_present`: else every
    frame after the prompt frame is SAM-2's constant "no object" mask, the same for every prompt)."""
    model = force_object_present(build_tiny_model(seed=0, sam_variant="sam2_tiny"))
    with torch.no_grad():  # a sharper prompt (x30): random tiny weights barely let the text move the mask
        model.projector.fc2.weight.mul_(30)
        model.projector.fc2.bias.mul_(30)
    return write_official_checkpoint(tmp_path_factory.mktemp("video") / "sam2", model, tok)


@pytest.fixture(scope="module")
def predictor(sam2_ckpt) -> EvfSam2VideoPredictor:
    return EvfSam2VideoPredictor.from_pretrained(sam2_ckpt)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return video_clip(4, 40, 56, seed=3)[0]


# ---------------------------------------------------------------------------------------------
# Official parity

FIXTURES = Path(__file__).parent / "fixtures" / "official"
TOL = 1e-3  # max |logit difference| allowed (fp32, CPU)


@pytest.fixture(scope="module")
def parity(tmp_path_factory) -> dict:
    """Our run on the golden's weights and clip: both prompts tracked at once (the official code ran
    once per prompt)."""
    import hashlib
    import lzma

    from evf_sam.testing import state_dict_sha256, video_parity_state_dict, write_parity_checkpoint
    from evf_sam.tokenizer import write_tokenizer_dir

    ref = torch.load(FIXTURES / "parity_sam2_video.pt", weights_only=True)
    tmp = tmp_path_factory.mktemp("video_parity")
    meta = json.loads((FIXTURES / "tokenizer_parity.json").read_text())["models"]["bpe"]
    tok = write_tokenizer_dir(tmp / "tok", lzma.decompress((FIXTURES / meta["file"]).read_bytes()),
                              meta["added_tokens"])
    state = video_parity_state_dict()
    sha = state_dict_sha256({k: v.to(torch.float16) for k, v in state.items()})
    ckpt = write_parity_checkpoint(tmp / "ckpt", "sam2", tok, state=state)
    del state
    predictor = EvfSam2VideoPredictor.from_pretrained(ckpt)
    frames, fps = load_video(FIXTURES / "video_clip")
    prompts = [c["prompt"] for c in ref["cases"]]
    result = predictor.predict(frames, prompts, keep_logits=True)
    return {"ref": ref, "weights_sha256": sha, "logits": result.logits, "prompts": prompts,
            "frames_sha256": [hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames],
            "ids": [predictor.tokenizer(p)["input_ids"] for p in prompts]}


def test_same_inputs_as_the_official_run(parity):
    ref = parity["ref"]
    assert parity["weights_sha256"] == ref["weights_sha256"]
    assert parity["frames_sha256"] == ref["frames_sha256_pil"] == ref["frames_sha256_cv2"]
    assert parity["ids"] == [c["ids"] for c in ref["cases"]]


def test_matches_official_inference_video(parity):
    ref = parity["ref"]
    t, h, w = ref["clip"]["frames"], ref["clip"]["height"], ref["clip"]["width"]
    assert parity["logits"].shape == (len(ref["cases"]), t, h, w)
    for p, case in enumerate(ref["cases"]):
        assert case["logits"].shape == (t, h, w)
        # the object is present on every frame (else the logits are SAM-2's constant -1024)
        assert (case["logits"].amax((1, 2)) > 0).all() and (case["logits"] > -1000).all()
        diff = (parity["logits"][p] - case["logits"]).abs().amax((1, 2))  # per frame
        assert diff.max() < TOL, f"{case['prompt']!r}: max |diff| per frame {diff.tolist()}"
        assert [int(a) for a in (parity["logits"][p] > 0).sum((1, 2))] == case["areas"]


def test_another_prompt_fails_the_comparison(parity):
    ref = parity["ref"]
    assert len(ref["cases"]) == 2
    for p, case in enumerate(ref["cases"]):
        other = parity["logits"][1 - p]  # the other prompt's logits against this prompt's golden
        diff = (other - case["logits"]).abs().amax((1, 2))
        assert (diff > 100 * TOL).all(), f"{case['prompt']!r}: {diff.tolist()}"


# ---------------------------------------------------------------------------------------------
# Tracking


def test_several_prompts_are_tracked_independently(predictor, clip):
    both = predictor.predict(clip, PROMPTS, keep_logits=True)
    assert both.masks.shape == (2, 4, 40, 56) and both.logits.shape == (2, 4, 40, 56)
    assert torch.equal(both.masks, both.logits > 0)
    for p, prompt in enumerate(PROMPTS):
        alone = predictor.predict(clip, prompt, keep_logits=True)
        assert alone.prompts == [prompt]
        torch.testing.assert_close(both.logits[p], alone.logits[0], rtol=0, atol=1e-5)
    # the two prompts do not give the same logits (the text reaches the tracker)
    assert (both.logits[0] - both.logits[1]).abs().max() > 1e-2


def test_prompt_frame_tracks_forward_then_backward(predictor, clip):
    order = [t for t, _ in predictor.propagate(clip, PROMPTS[0], frame_idx=2)]
    assert order == [2, 3, 1, 0]
    full = predictor.predict(clip, PROMPTS[0], frame_idx=2, keep_logits=True).logits[0]
    # forward from frame 2 sees frames 2, 3 only: the same as the clip that starts at frame 2
    tail = predictor.predict(clip[2:], PROMPTS[0], frame_idx=0, keep_logits=True).logits[0]
    torch.testing.assert_close(full[2:], tail, rtol=0, atol=1e-5)
    assert (full[1] - full[2]).abs().max() > 1e-3  # frames before the prompt frame are tracked too
    # prompted on the last frame, tracking runs backward only: the reversed clip tracked forward
    # (with a prompt frame in the middle the backward pass also remembers the forward pass's frames)
    last = predictor.predict(clip, PROMPTS[0], frame_idx=3, keep_logits=True).logits[0]
    rev = predictor.predict(clip[::-1], PROMPTS[0], frame_idx=0, keep_logits=True).logits[0]
    torch.testing.assert_close(last, rev.flip(0), rtol=0, atol=1e-5)


def test_bad_inputs(predictor, clip, tmp_path):
    with pytest.raises(ValueError, match="outside the video"):
        predictor.predict(clip, PROMPTS[0], frame_idx=4)
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(clip, ["  "])
    with pytest.raises(ValueError, match="one size"):
        predictor.predict([clip[0], clip[1][:, :50]], PROMPTS[0])
    with pytest.raises(ValueError, match="EVF-SAM2"):
        EvfSam2VideoPredictor(build_tiny_model(seed=0), tokenizer=make_tokenizer(tmp_path / "tok"))


def test_beit_input_antialias_matches_torchvision():
    """inference_video.py's BEiT-3 input: torchvision Resize(bicubic) with its default antialias=True;
    inference.py passes antialias=None (no antialiasing, the default of beit3_preprocess)."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    frame = video_clip(1, 54, 96, seed=5)[0][0]
    ref = transforms.Compose([transforms.ToTensor(),
                              transforms.Resize((224, 224), interpolation=InterpolationMode.BICUBIC),
                              transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])(frame)
    torch.testing.assert_close(beit3_preprocess(frame, 224, antialias=True), ref, rtol=0, atol=1e-6)
    assert (beit3_preprocess(frame, 224) - ref).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Frames in, files out


def test_load_video_frame_dir_order_and_mp4_round_trip(tmp_path):
    frames, masks = video_clip(3, 32, 48, background="flat")
    d = tmp_path / "frames"
    d.mkdir()
    for name, f in zip(("2.png", "10.png", "x.png"), frames):  # numeric names in numeric order, then the rest
        Image.fromarray(f).save(d / name)
    (d / "notes.txt").write_text("not a frame")
    loaded, fps = load_video(d)
    assert fps is None and len(loaded) == 3
    assert all(np.array_equal(a, b) for a, b in zip(loaded, frames))

    data, ext = encode_overlay_video(frames, fps=12)
    assert ext == "mp4"
    (tmp_path / "clip.mp4").write_bytes(data)
    decoded, fps = load_video(tmp_path / "clip.mp4")
    assert len(decoded) == 3 and decoded[0].shape == (32, 48, 3) and fps == pytest.approx(12)
    for a, b, m in zip(decoded, frames, masks):  # lossy, but the disc is where it was
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 6
        assert a[m][:, 0].mean() > 180 and a[~m][:, 0].mean() < 150

    with pytest.raises(FileNotFoundError, match="not found"):
        load_video(tmp_path / "missing.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot decode"):
        load_video(tmp_path / "broken.mp4")


def test_overlay_is_an_animated_gif_without_pyav(monkeypatch):
    import sys

    frames = video_clip(3, 21, 33, background="flat")[0]  # odd sides
    monkeypatch.setitem(sys.modules, "av", None)
    data, ext = encode_overlay_video(frames, fps=10)
    assert ext == "gif"
    import io

    im = Image.open(io.BytesIO(data))
    assert im.n_frames == 3 and im.size == (33, 21)


def test_odd_sized_overlay_mp4_is_padded(tmp_path):
    frames = video_clip(2, 21, 33, background="flat")[0]
    data, ext = encode_overlay_video(frames, fps=5)
    (tmp_path / "o.mp4").write_bytes(data)
    decoded, _ = load_video(tmp_path / "o.mp4")
    assert ext == "mp4" and len(decoded) == 2 and decoded[0].shape == (22, 34, 3)


def _cli(ckpt, video, out, *extra):
    return main(["predict-video", "--checkpoint", str(ckpt), "--video", str(video), "--output", str(out),
                 "--device", "cpu", *extra])


def test_cli_writes_masks_overlay_and_summary(sam2_ckpt, predictor, clip, tmp_path):
    d = tmp_path / "clip"
    d.mkdir()
    for t, f in enumerate(clip):
        Image.fromarray(f).save(d / f"{t:05d}.png")
    out = tmp_path / "out"
    assert _cli(sam2_ckpt, d, out, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--frame", "1") == 0
    summary = json.loads((out / "video.json").read_text())
    assert (summary["frames"], summary["height"], summary["width"], summary["prompt_frame"]) == (4, 40, 56, 1)
    assert [p["prompt"] for p in summary["prompts"]] == PROMPTS and summary["fps"] == 30.0
    want = predictor.predict(clip, PROMPTS, frame_idx=1).masks.numpy()  # (P, T, H, W)
    for p, rec in enumerate(summary["prompts"]):
        files = sorted((out / rec["masks"]).iterdir())
        assert [f.name for f in files] == [f"{t:05d}.png" for t in range(4)]
        for t, f in enumerate(files):
            png = np.asarray(Image.open(f))
            assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
            assert np.array_equal(png == 255, want[p, t])
            assert summary["areas"][t][p] == int(want[p, t].sum())
    assert summary["overlay"] == "overlay.mp4"
    decoded, fps = load_video(out / "overlay.mp4")
    assert len(decoded) == 4 and decoded[0].shape[:2][1] >= 56 and fps == pytest.approx(30)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp")]


def test_cli_rejects_bad_input_and_writes_nothing(sam2_ckpt, tok, clip, tmp_path, capsys):
    d = tmp_path / "clip"
    d.mkdir()
    for t, f in enumerate(clip):
        Image.fromarray(f).save(d / f"{t:05d}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    sam1 = write_official_checkpoint(tmp_path / "sam1", build_tiny_model(seed=0), tok)
    cases = [
        ((sam2_ckpt, tmp_path / "nope", out, "--prompt", "x"), "not found"),
        ((sam2_ckpt, d, out, "--prompt", "x", "--frame", "4"), "--frame 4 is outside the video"),
        ((sam2_ckpt, d, out, "--prompt", " "), "empty prompt"),
        ((sam2_ckpt, d, out), "no --prompt"),
        ((sam1, d, out, "--prompt", "x"), "needs an EVF-SAM2 checkpoint"),
    ]
    for args, msg in cases:
        assert _cli(*args) == 2
        assert msg in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_write_video_outputs_is_atomic(predictor, clip, tmp_path, monkeypatch):
    result = predictor.predict(clip[:2], PROMPTS[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    import evf_sam.visualize

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(evf_sam.visualize, "render_masks", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_video_outputs(out, clip[:2], result)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    monkeypatch.undo()
    summary = write_video_outputs(out, clip[:2], result, overlay=False)
    assert summary["overlay"] is None
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "masks", "video.json"]

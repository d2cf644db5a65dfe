"""Fine-tuning EVF-SAM2's SAM-2 memory path on clips (evf_sam/engine/video_tracking.py) and the
synthetic moving-shape clips (evf_sam/data/synthetic_video.py).

* the clips: deterministic, the target's colour unique, masks = the painted pixels, objects move and
  never touch;
* the training forward is the inference forward: `track_clips` in eval mode gives, frame by frame, the
  logits of `EvfSam2VideoPredictor` on the same weights (the predictor's one documented difference, the
  binarised memory of the prompted frame, switched off for the comparison), and B clips batched give
  what each gives alone;
* gradients reach the memory modules, and frame t's loss reaches the text prompt of frame 0 through
  the memory; training lowers the loss on fixed clips and leaves the image encoder alone.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("sam2") is None:  # the video predictor is Meta's sam2 package's
    pytest.skip("Meta's sam2 package is not installed", allow_module_level=True)

from evf_sam.data.synthetic import COLOURS  # noqa: E402
from evf_sam.data.synthetic_video import moving_shapes_clip  # noqa: E402
from evf_sam.engine.video_tracking import (  # noqa: E402
    encode_clip_frames,
    track_clips,
    train_video_tracking,
    video_tracking_loss,
)
from evf_sam.models.encoders import load_encoder_tokenizer  # noqa: E402
from evf_sam.predictor import _tokenize  # noqa: E402
from evf_sam.testing import build_tiny_model, force_object_present, make_tokenizer  # noqa: E402
from evf_sam.video import EvfSam2VideoPredictor  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models' tensors are tiny: a second intra-op thread saves nothing and, on a shared 2-core
    machine, made each op wait on the busy core (a training step ~100x slower than with one thread)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_encoder_tokenizer("beit3_tiny", make_tokenizer(tmp_path_factory.mktemp("vt_tok") / "tok"))


def _model(seed: int = 0):
    """Tiny EVF-SAM2 whose object-score head says "present" and whose prompt is sharp (as tests/test_video.py's
    fixture): else every tracked frame is SAM-2's constant "no object" mask and comparisons are vacuous."""
    model = force_object_present(build_tiny_model(seed=seed, sam_variant="sam2_tiny"))
    with torch.no_grad():
        model.projector.fc2.weight.mul_(30)
        model.projector.fc2.bias.mul_(30)
    return model


# ---------------------------------------------------------------------------------------------
# Clips


def test_moving_shapes_clip():
    clip = moving_shapes_clip(5, n_frames=4, size=64)
    again = moving_shapes_clip(5, n_frames=4, size=64)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, again.frames)) and clip.expression == again.expression
    assert not np.array_equal(moving_shapes_clip(6).frames[0], clip.frames[0])
    k, t, h, w = clip.object_masks.shape
    assert (k, t, h, w) == (3, 4, 64, 64) and len(clip.frames) == 4 and clip.frames[0].shape == (64, 64, 3)
    target = clip.objects[0]
    assert clip.expression == f"the {target['colour']} {target['shape']}"
    assert len({o["colour"] for o in clip.objects}) == 3  # the colour names exactly one object
    for f in range(4):
        assert clip.object_masks[:, f].sum(0).max() == 1  # no overlap
        for j, o in enumerate(clip.objects):
            m = clip.object_masks[j, f]
            assert m.sum() > 50 and (clip.frames[f][m] == COLOURS[o["colour"]]).all()
        background = ~clip.object_masks[:, f].any(0)
        assert (clip.frames[f][background] == 128).all()
    # every object moves: its centroid follows its path, the target leaves its frame-0 place
    for j, o in enumerate(clip.objects):
        for f in range(4):
            ys, xs = np.nonzero(clip.object_masks[j, f])
            cx, cy = o["centres"][f]
            assert abs(xs.mean() - cx) < 1.5 and abs(ys.mean() - cy) < 1.5
    m = clip.masks
    assert (m[0] & m[3]).sum() / (m[0] | m[3]).sum() < 0.2
    with pytest.raises(ValueError, match="colours"):
        moving_shapes_clip(0, colours=("red", "pink"))
    with pytest.raises(ValueError, match="n_distractors"):
        moving_shapes_clip(0, n_distractors=3)


# ---------------------------------------------------------------------------------------------
# Training forward = inference forward


def test_training_forward_matches_the_video_predictor(tok):
    model = _model().eval()
    clips = [moving_shapes_clip(s, n_frames=3) for s in (1, 2)]
    predictor = EvfSam2VideoPredictor(model, tokenizer=tok)
    predictor.tracker.fill_hole_area = 0
    feats = [encode_clip_frames(model, c) for c in clips]
    ids, pad = _tokenize(model, tok, [c.expression for c in clips])
    with torch.no_grad():
        both = track_clips(model, feats, ids, pad)
        alone = [track_clips(model, feats[i:i + 1], *_tokenize(model, tok, [clips[i].expression]))
                 for i in range(2)]
    pe = model.sam.sam_prompt_encoder
    assert type(pe).__name__ == "PromptEncoder" and not hasattr(pe, "text_embeds")  # restored
    for i, clip in enumerate(clips):
        for t in range(3):  # batching two clips changes nothing
            torch.testing.assert_close(both[t]["pred_masks"][i], alone[i][t]["pred_masks"][0], rtol=0, atol=1e-4)
        ours = torch.stack([both[t]["pred_masks"][i, 0] for t in range(3)])  # (T, 64, 64): the clip's size
        assert (ours.amax((1, 2)) > 0).all()
        predictor.tracker.binarize_mask_from_pts_for_mem_enc = False
        theirs = predictor.predict(clip.frames, clip.expression, keep_logits=True).logits[0]
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)
        # as shipped, the prompted frame's memory is binarised: frame 0 is the same, later frames move
        predictor.tracker.binarize_mask_from_pts_for_mem_enc = True
        shipped = predictor.predict(clip.frames, clip.expression, keep_logits=True).logits[0]
        torch.testing.assert_close(shipped[0], theirs[0], rtol=0, atol=1e-5)
        assert (shipped[1:] - theirs[1:]).abs().max() > 1e-4
    # the other clip's expression on this clip's frames gives other logits (the text is the prompt)
    with torch.no_grad():
        swapped = track_clips(model, feats, ids.flip(0), pad.flip(0))
    if clips[0].expression != clips[1].expression:
        assert (swapped[2]["pred_masks"][0] - both[2]["pred_masks"][0]).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# Gradients and training


def _grad_norms(model) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, p in model.named_parameters():
        if p.grad is not None:
            key = ".".join(n.split(".")[:2])
            out[key] = out.get(key, 0.0) + float(p.grad.abs().sum())
    return out


def test_gradients_flow_through_the_memory(tok):
    model = _model().eval()
    clips = [moving_shapes_clip(s, n_frames=3) for s in (3, 4)]
    feats = [encode_clip_frames(model, c) for c in clips]
    ids, pad = _tokenize(model, tok, [c.expression for c in clips])
    gt = torch.stack([f.masks for f in feats])  # (B, T, 64, 64)
    assert gt.shape == (2, 3, 64, 64)
    out = track_clips(model, feats, ids, pad)
    assert out[0]["multimasks"].shape == (2, 3, 64, 64) and out[0]["ious"].shape == (2, 3)
    assert out[1]["obj_score"].shape == (2, 1)
    losses = video_tracking_loss(out, gt)
    assert set(losses) == {"total", "bce", "dice", "iou", "obj_score"} and torch.isfinite(losses["total"])
    losses["total"].backward()
    g = _grad_norms(model)
    for key in ("encoder.encoder", "projector.fc2", "sam.sam_mask_decoder", "sam.memory_attention",
                "sam.memory_encoder", "sam.obj_ptr_proj", "sam.maskmem_tpos_enc"):
        assert g.get(key, 0.0) > 0, f"no gradient reaches {key}: {g}"
    assert "sam.image_encoder" not in g  # frozen, features computed without autograd

    # the last frame's loss alone: it reaches frame 0's text prompt only through the memory
    model.zero_grad(set_to_none=True)
    out = track_clips(model, feats, ids, pad)
    video_tracking_loss(out[2:], gt[:, 2:])["total"].backward()
    g = _grad_norms(model)
    for key in ("projector.fc2", "encoder.encoder", "sam.memory_encoder", "sam.memory_attention"):
        assert g.get(key, 0.0) > 0, f"frame 2's loss does not reach {key}: {g}"


def test_training_lowers_the_loss_and_keeps_the_image_encoder(tok):
    model = build_tiny_model(seed=1, sam_variant="sam2_tiny")
    before = {k: v.clone() for k, v in model.sam.image_encoder.state_dict().items()}
    clips = [moving_shapes_clip(s, n_frames=3) for s in (7, 8)]
    hist = train_video_tracking(model, tok, clips, steps=25, batch_size=2, lr=2e-3, seed=0)
    assert len(hist) == 25 and not model.training
    first, last = hist[0]["total"], np.mean([h["total"] for h in hist[-3:]])
    assert last < 0.7 * first, [round(h["total"], 3) for h in hist]
    # the object-score head learns "present" (random head: BCE ~0.76)
    assert hist[-1]["obj_score"] < 0.5 * hist[0]["obj_score"], [round(h["obj_score"], 3) for h in hist]
    after = model.sam.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in model.sam.image_encoder.parameters())


def test_bad_inputs(tok):
    with pytest.raises(ValueError, match="EVF-SAM2"):
        train_video_tracking(build_tiny_model(seed=0), tok, [moving_shapes_clip(0)], steps=1)
    model = build_tiny_model(seed=0, sam_variant="sam2_tiny")
    with pytest.raises(ValueError, match="different lengths"):
        train_video_tracking(model, tok, [moving_shapes_clip(0, n_frames=3), moving_shapes_clip(1, n_frames=4)],
                             steps=1)
    clip = moving_shapes_clip(0, n_frames=3)
    clip.object_masks = clip.object_masks[:, :2]
    with pytest.raises(ValueError, match="masks"):
        encode_clip_frames(model, clip)


# ---------------------------------------------------------------------------------------------
# A trained tiny EVF-SAM2 follows the moving shape (the real inference path, from a saved checkpoint)

# The recipe: every number here is part of it (thresholds measured over 3 training seeds, below).
TRACK_CLIP = {"n_frames": 3, "size": 64, "n_distractors": 1, "radius": (0.14, 0.2)}
TRACK_TRAIN = {"steps": 300, "batch_size": 8, "lr": 2e-3, "warmup_steps": 15}
TRACK_TRAIN_CLIPS = 48
TRACK_TEST_SEEDS = range(10_000, 10_006)  # held out: the training clips are seeds 0..47


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., H, W) bool pairs -> (...) IoU (1 where both are empty)."""
    union = (a | b).sum((-2, -1))
    return np.where(union > 0, (a & b).sum((-2, -1)) / np.maximum(union, 1), 1.0)


def _centroid(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else np.array([np.nan, np.nan])


def _score(predictor: EvfSam2VideoPredictor, clips) -> dict[str, np.ndarray]:
    """Per clip and frame: IoU with the target; per clip: the cosine between the predicted mask's and the
    target's centroid displacement from the first to the last frame; beside them the text-blind
    baselines on the same clips: the frame-0 target mask copied to every frame, the union of all shapes."""
    iou, cosine = [], []
    for c in clips:
        masks = predictor.predict(c.frames, c.expression).masks[0].numpy()  # (T, H, W)
        iou.append(_iou(masks, c.masks))
        moved = np.nan_to_num(_centroid(masks[-1]) - _centroid(masks[0]))  # (2,): 0 if a mask is empty
        truth = _centroid(c.masks[-1]) - _centroid(c.masks[0])
        cosine.append(float(moved @ truth / max(np.linalg.norm(moved) * np.linalg.norm(truth), 1e-9)))
    return {"iou": np.array(iou), "cosine": np.array(cosine),
            "static": np.array([_iou(np.repeat(c.masks[:1], len(c.frames), 0), c.masks) for c in clips]),
            "union": np.array([_iou(c.object_masks.any(0), c.masks) for c in clips])}


@pytest.mark.slow
def test_trained_tiny_evf_sam2_moves_its_mask_with_the_target(tmp_path):
    """Train a random tiny EVF-SAM2 on clips (`train_video_tracking`, 300 steps), save it, load it back
    into the video predictor and track 6 held-out clips (new positions, directions, speeds, colours)
    from the text alone.

    Measured with training seeds 0 / 1 / 2 (model init and clip order; this test runs seed 0), per-frame
    mean IoU over the 6 clips: trained [0.90 0.59 0.57] / [0.69 0.53 0.49] / [0.68 0.39 0.44]; the
    frame-0 mask copied to every frame [1.0 0.47 0.20]; the union of both shapes [0.51 0.51 0.51];
    untrained [0 0 0] (the object-score head says "no object") / forced "present" <= 0.12.
    Mean cosine between the predicted and the true centroid displacement (frame 0 -> 2): 0.74 / 0.69 /
    0.59. So the masks move with the target and beat the static mask, but this budget does NOT make
    them beat the union of all shapes after frame 0 on every seed (seed 0 does: 0.59 / 0.57 vs 0.51);
    the thresholds below hold for all three seeds with margin.
    """
    tok_dir = make_tokenizer(tmp_path / "tok")
    tok = load_encoder_tokenizer("beit3_tiny", tok_dir)
    model = build_tiny_model(seed=0, sam_variant="sam2_tiny")
    tests = [moving_shapes_clip(s, **TRACK_CLIP) for s in TRACK_TEST_SEEDS]
    untrained = _score(EvfSam2VideoPredictor(model, tokenizer=tok), tests)
    # random weights with the object forced present (else every frame is SAM-2's "no object")
    forced = _score(EvfSam2VideoPredictor(force_object_present(build_tiny_model(seed=0, sam_variant="sam2_tiny")),
                                          tokenizer=tok), tests)

    torch.manual_seed(0)
    clips = [moving_shapes_clip(s, **TRACK_CLIP) for s in range(TRACK_TRAIN_CLIPS)]
    hist = train_video_tracking(model, tok, clips, seed=0, **TRACK_TRAIN)
    ckpt = model.save_pretrained(tmp_path / "ckpt", tok_dir)
    trained = _score(EvfSam2VideoPredictor.from_pretrained(ckpt), tests)

    mean = {k: v.mean(0).round(3).tolist() for k, v in (
        ("trained", trained["iou"]), ("untrained", untrained["iou"]), ("untrained, object forced", forced["iou"]),
        ("static frame-0 mask", trained["static"]), ("union of shapes", trained["union"]))}
    print(f"\nper-frame mean IoU over {len(tests)} held-out clips: {mean}; direction cosine "
          f"{trained['cosine'].round(2).tolist()}; loss {hist[0]['total']:.3f} -> {hist[-1]['total']:.3f}")
    iou = trained["iou"]  # (clips, T)
    assert iou[:, 0].mean() > 0.55, mean  # the text finds the target on the prompt frame (seeds: >= 0.67)
    assert (iou.mean(0) > 0.3).all(), mean  # and every later frame keeps it (seeds: >= 0.39)
    # the mask moves with the target: on the last frame it beats the frame-0 mask copied (seeds: +0.25 ..
    # +0.38 on average; on 5-6 of the 6 clips) and its centroid moves the target's way (seeds: >= 0.59)
    assert iou[:, -1].mean() > trained["static"][:, -1].mean() + 0.12, mean
    assert (iou[:, -1] > trained["static"][:, -1]).sum() >= 4, (iou[:, -1], trained["static"][:, -1])
    assert trained["cosine"].mean() > 0.3, trained["cosine"]
    # training is what does it: the untrained model (same code, same clips) fails, also with its
    # object-score head forced to "present"
    for before in (untrained, forced):
        assert before["iou"][:, 0].mean() < 0.3 and before["iou"][:, -1].mean() < 0.3, mean

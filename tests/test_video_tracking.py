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

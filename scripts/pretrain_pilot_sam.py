#!/usr/bin/env python
"""Class-agnostic pre-training of a pilot's tiny SAM with point prompts (research tool for the CPU pilots).

EVF-SAM starts from a SAM that segment-anything trained on SA-1B with point and box prompts and no text; a
pilot's tiny SAM starts from random weights, so its mask decoder has never learnt to segment *the object a
prompt points at*. This gives the tiny SAM that pre-training on the pilot's synthetic training images
(Kirillov et al. 2023, "Segment Anything", Sec. 3: a prompt -> a valid mask): each step samples one
foreground point uniformly inside an object mask, encodes it with SAM's own prompt encoder
(``PromptEncoder(points=..., boxes=None)``: the point plus SAM's padding point) and trains the image
encoder, prompt encoder and mask decoder with the pilots' mask loss (BCE + Dice, single-mask output). No
sentence is read: the objects are the referred objects of the training split, used as instance masks.

Then every fusion variant of a pilot starts from the same SAM (frozen image encoder, as EVF-SAM)::

    python scripts/pretrain_pilot_sam.py OUT +experiment=pilot_base data.root=data/synthetic_grounded
    python scripts/train.py +experiment=pilot_table3 seed=0,1,2 model.sam_checkpoint=OUT/sam.pth \
        'run_dir=runs/pilot_table3_sam/${fusion.name}_s${seed}'   # not the from-scratch runs' dirs (resume=auto)

Writes ``OUT/sam.pth`` (a segment-anything state dict, what `load_sam_state_dict` reads), ``OUT/tokenizer/``
(made by the model builder; unused by SAM) and ``OUT/pretrain.json`` (settings, final loss and the IoU of the
predicted masks over the last steps).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sample_points(gt_masks, gen):
    """One foreground point per mask, uniform over its pixels: (N, S, S) {0, 1} -> (N, 1, 2) float (x, y)
    pixel coordinates in the SAM input frame (SAM's prompt encoder adds the 0.5 pixel-centre shift), and
    (N,) bool: the masks that have a pixel (the others get a point but must be left out of the loss)."""
    import torch

    n, s = gt_masks.shape[0], gt_masks.shape[-1]
    flat = gt_masks.reshape(n, -1).float()
    has = flat.sum(1) > 0
    weights = torch.where(has[:, None], flat, torch.ones_like(flat))
    idx = torch.multinomial(weights, 1, generator=gen)[:, 0]  # (N,)
    xy = torch.stack([idx % s, idx // s], dim=-1).float()  # (N, 2): x = column, y = row
    return xy[:, None, :], has


def pretrain(out: Path, overrides: list[str], *, steps: int, batch_size: int, lr: float, seed: int,
             log_every: int = 50) -> dict:
    import torch
    from hydra import compose, initialize_config_dir

    import evf_sam.config  # noqa: F401
    from evf_sam.atomic import atomic_write_bytes, atomic_write_text
    from evf_sam.config import typed
    from evf_sam.data.build import build_train_dataset, prepare_data, tokenizer_corpus
    from evf_sam.engine.build import build_model_and_tokenizer
    from evf_sam.engine.losses import mask_losses, upsample_logits
    from evf_sam.models.sam import SamBackend

    config_dir = Path(__file__).resolve().parents[1] / "configs"
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"seed={seed}"])
    data, model_cfg = typed(cfg.data), typed(cfg.model)
    if model_cfg.sam_checkpoint:
        raise ValueError(f"model.sam_checkpoint={model_cfg.sam_checkpoint!r} is set: this script pre-trains a SAM "
                         f"from random weights; drop the override")
    prepare_data(data)
    torch.manual_seed(seed)
    model, tokenizer, _ = build_model_and_tokenizer(model_cfg, out, tokenizer_sentences=tokenizer_corpus(data))
    sam = model.sam
    if not isinstance(sam, SamBackend):
        raise ValueError(f"SAM variant {model_cfg.sam_variant!r} is not a segment-anything SAM (this script "
                         f"pre-trains segment-anything's prompt encoder); use model.sam_variant=tiny")
    ds = build_train_dataset(data, model, tokenizer, seed=seed, with_sam_images=True)
    params = [p for p in sam.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * max(0.0, 1 - s / steps))
    gen = torch.Generator().manual_seed(seed)
    sam.train()
    hist: list[dict] = []
    t0 = time.time()
    for step in range(steps):
        batch = ds.collate([ds[(step * batch_size + j) % len(ds)] for j in range(batch_size)])
        points, has = sample_points(batch.gt_masks, gen)
        if not bool(has.any()):  # only empty masks (no-target expressions): nothing to point at
            continue
        labels = torch.ones(points.shape[:2], dtype=torch.long)  # foreground points
        sparse, _ = sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)  # (N, 2, C)
        emb = sam.image_encoder(batch.sam_images)  # (B, C, h, w)
        low_res, _ = sam.decode_text_prompts(emb, sparse, batch.image_index)  # (N, 1, 4h, 4w)
        losses = mask_losses(low_res[has], batch.gt_masks[has])
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            pred = upsample_logits(low_res[has], batch.gt_masks.shape[-1]) > 0
            gt = batch.gt_masks[has] > 0.5
            iou = (pred & gt).sum().item() / max(1, (pred | gt).sum().item())
        hist.append({"loss": losses.total.item(), "bce": losses.bce.item(), "dice": losses.dice.item(), "ciou": iou})
        if (step + 1) % log_every == 0:
            last = hist[-log_every:]
            avg = {k: sum(h[k] for h in last) / len(last) for k in last[0]}
            print(f"step {step + 1}/{steps}: " + " ".join(f"{k} {v:.3f}" for k, v in avg.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)
    if not hist:
        raise ValueError("no training step had an object mask to point at (every expression has an empty target); "
                         "pre-train on referring data with objects, e.g. +experiment=pilot_base")
    sam.eval()
    state = {k: v.detach().clone() for k, v in sam.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / "sam.pth", buf.getvalue())
    last = hist[-min(len(hist), 100):]
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "overrides": overrides,
               "sam_variant": model_cfg.sam_variant, "seconds": round(time.time() - t0, 1),
               "final": {k: sum(h[k] for h in last) / len(last) for k in last[0]}}
    atomic_write_text(out / "pretrain.json", json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output directory (sam.pth, pretrain.json)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of configs/train.yaml (e.g. +experiment=pilot_base)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=8, help="images per step (masks: up to k per image)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    s = pretrain(args.out, args.overrides, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                 log_every=args.log_every)
    print(json.dumps(s["final"]), f"wrote {args.out / 'sam.pth'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

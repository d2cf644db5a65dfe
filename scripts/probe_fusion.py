#!/usr/bin/env python
"""Fusion probe: can a tiny encoder's prompt point at the object its text names? (paper Tab. 3 axis, on CPU)

EVF-SAM's Tab. 3 varies where the text meets the image in the multimodal encoder (text only, late fusion,
early fusion) and keeps everything else. This probe isolates that axis from SAM: the prompt feature of
`evf_sam.models.encoders.build_prompt_encoder` (the one EVF-SAM hands through its projector to SAM's mask
decoder; here the tiny BEiT-3 of the pilots, 2 layers, 32 px, 8 px patches), then EVF-SAM's projector
(`Projector`, Linear -> ReLU -> Linear to the tiny SAM's prompt width 32), then a point head
(32 -> 64 -> 2), trained from scratch to regress the centre of the object the text names (MSE).

The task is built so that the text alone cannot answer: each scene (``size`` px, grey background) holds 2-4
discs in 4 colours, colours repeat, and the text names the one disc whose colour is unique there ("the red
shape"). Where that disc is changes from scene to scene, so a text-only prompt can learn nothing but the
average position; a late-fusion prompt sees the image only through a text-independent summary (the image
[CLS]) that must carry every disc's colour and place; an early-fusion prompt (the vision [CLS] after
joint self-attention over image patches and words) can look for what the words name. Fresh scenes every
step; a fixed held-out set of ``--eval-scenes`` scenes (seed 10,000 + the run's seed) scores each run:

* ``hit``: the predicted point lies within the named disc (pointing accuracy, %)
* ``dist``: mean distance to its centre, in pixels

beside two text-blind pointers on the same scenes: the image centre, and a disc drawn uniformly (its
expected hit rate: the fraction of the scene's discs whose centre lies within the named one).

    python scripts/probe_fusion.py runs/probe_fusion                       # text, late, early x seeds 0-2
    python scripts/probe_fusion.py runs/probe_fusion --fusion early_l12 --seeds 0
    python scripts/probe_fusion.py runs/probe_fusion --summary             # the table of what OUT holds

``--tokenizer DIR`` reads the sentences with a pilot's sentencepiece tokenizer and ``--save-encoder`` also
writes ``OUT/<fusion>_s<seed>_encoder.pth``, a BEiT-3 .pth that a pilot row starts from with
``model.encoder_checkpoint`` (README: tried as the pilot encoder's pre-training; it did not help).

Each run writes ``OUT/<fusion>_s<seed>.json`` (settings, training curve, scores) atomically; the table
(mean ± sample std over seeds) covers every run in OUT, so several processes may share one OUT.
Measured figures: README, "CPU pilots".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

# The probe's vocabulary: BEiT-3's special ids (<s> 0, <pad> 1, </s> 2) and four words.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0), "yellow": (1.0, 1.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
WORD_IDS = {"the": 4, "shape": 5, **{c: 6 + i for i, c in enumerate(COLOURS)}}
VOCAB_SIZE = 6 + len(COLOURS)
FUSIONS = ("text", "late", "early_l12", "early")  # the rows of paper Tab. 3 for BEiT-3


def make_scenes(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """``n`` scenes: ``images`` (n, 3, size, size) float32 in [-1, 1] (BEiT-3 normalisation, mean = std = 0.5),
    ``sentences`` (n,) ("the <colour> shape"), ``text_ids`` (n, 5) long (them in the probe's own vocabulary,
    `WORD_IDS`: "<s> the <colour> shape </s>"), ``centres`` (n, 4, 2) (x, y) in pixels and
    ``radii`` (n, 4) and ``colours`` (n, 4) (index into `COLOURS`) of up to 4 discs (``count`` (n,) of them are
    real; disc 0 is the named one, the only one of its colour; later discs are drawn over earlier ones)."""
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], dtype=np.float32)
    images = np.full((n, 3, size, size), 0.5, np.float32)
    centres = np.zeros((n, 4, 2), np.float32)
    radii = np.zeros((n, 4), np.float32)
    count = rng.integers(2, 5, n)
    colours = np.full((n, 4), -1, np.int64)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    for i in range(n):
        k = int(count[i])
        cols = rng.integers(0, len(names), k)
        while (cols == cols[0]).sum() > 1:
            cols = rng.integers(0, len(names), k)
        for j in range(k):
            r = rng.uniform(size / 11, size / 5.5)
            cx, cy = rng.uniform(r, size - r, 2)
            images[i][:, (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = palette[cols[j]][:, None]
            centres[i, j], radii[i, j] = (cx, cy), r
        colours[i, :k] = cols
    ids = np.stack([np.zeros(n, np.int64), np.full(n, WORD_IDS["the"]), 6 + colours[:, 0],
                    np.full(n, WORD_IDS["shape"]), np.full(n, 2)], axis=1)
    return {"images": images * 2 - 1, "text_ids": ids, "centres": centres, "radii": radii, "colours": colours,
            "count": count, "sentences": [f"the {names[c]} shape" for c in colours[:, 0]]}


def score(points: np.ndarray, scenes: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{"model" | "centre" | "object": {"hit": %, "dist": px}}`` of ``points`` (n, 2) (x, y) in pixels and of
    the text-blind pointers, against disc 0 of each scene."""
    size = scenes["images"].shape[-1]
    target, r = scenes["centres"][:, 0], scenes["radii"][:, 0]
    n = len(target)
    d_model = np.linalg.norm(points - target, axis=1)
    d_centre = np.linalg.norm(np.full((n, 2), size / 2) - target, axis=1)
    obj_hit, obj_dist = np.zeros(n), np.zeros(n)
    for i in range(n):
        k = int(scenes["count"][i])
        d = np.linalg.norm(scenes["centres"][i, :k] - target[i], axis=1)
        obj_hit[i], obj_dist[i] = (d <= r[i]).mean(), d.mean()
    return {"model": {"hit": 100 * float((d_model <= r).mean()), "dist": float(d_model.mean())},
            "centre": {"hit": 100 * float((d_centre <= r).mean()), "dist": float(d_centre.mean())},
            "object": {"hit": 100 * float(obj_hit.mean()), "dist": float(obj_dist.mean())}}


def run_probe(fusion: str, seed: int, *, steps: int = 3000, batch_size: int = 32, lr: float = 6e-4, size: int = 32,
              patch_size: int = 8, eval_scenes: int = 1000, log_every: int = 500, threads: int | None = None,
              tokenizer_dir: str | Path | None = None, save_encoder: str | Path | None = None) -> dict:
    """Trains one (fusion, seed) probe from scratch and scores it on the held-out scenes (``threads``: torch's
    thread count while it runs, restored after).

    ``tokenizer_dir``: read the sentences with this BEiT-3 (sentencepiece) tokenizer, e.g. a pilot run's
    ``<run_dir>/tokenizer``, instead of the probe's own 10-word vocabulary. ``save_encoder``: write the trained
    encoder there as a BEiT-3 .pth (``{"model": {"beit3.*": ...}}``), which a pilot loads with
    ``model.encoder_checkpoint`` (with ``model.tokenizer=<tokenizer_dir>``)."""
    import torch

    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train_and_score(fusion, seed, steps=steps, batch_size=batch_size, lr=lr, size=size,
                                patch_size=patch_size, eval_scenes=eval_scenes, log_every=log_every,
                                tokenizer_dir=tokenizer_dir, save_encoder=save_encoder)
    finally:
        torch.set_num_threads(previous_threads)


def _train_and_score(fusion: str, seed: int, *, steps: int, batch_size: int, lr: float, size: int, patch_size: int,
                     eval_scenes: int, log_every: int, tokenizer_dir: str | Path | None,
                     save_encoder: str | Path | None) -> dict:
    import torch
    from torch import nn

    from evf_sam.models.beit3 import save_beit3_state_dict
    from evf_sam.models.encoders import build_prompt_encoder, load_encoder_tokenizer, tokenize_for_encoder
    from evf_sam.models.projector import Projector

    tokenizer = load_encoder_tokenizer("beit3_tiny", tokenizer_dir) if tokenizer_dir is not None else None
    torch.manual_seed(seed)
    vocab = len(tokenizer) if tokenizer is not None else VOCAB_SIZE
    overrides = {"img_size": size, "patch_size": patch_size, "vocab_size": vocab}
    if fusion == "early_l12":  # paper: early fusion in layers 1-12 of 24; the 2-layer tiny encoder: layer 1
        encoder = build_prompt_encoder("beit3_tiny", fusion="early_k", fused_layers=1, overrides=overrides)
    else:
        encoder = build_prompt_encoder("beit3_tiny", fusion=fusion, overrides=overrides)
    projector = Projector(encoder.feature_dim, 32)
    head = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 2))
    params = [*encoder.parameters(), *projector.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = min(20, max(1, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps))

    def predict(scenes: dict[str, np.ndarray]) -> torch.Tensor:  # -> (n, 2) fractions of the image side
        if tokenizer is None:
            ids = torch.from_numpy(scenes["text_ids"])
            pad = torch.zeros_like(ids, dtype=torch.bool)
        else:
            ids, pad = tokenize_for_encoder("beit3_tiny", tokenizer, scenes["sentences"], encoder.max_text_len)
        feat = encoder(text_ids=ids, text_padding_mask=pad, image=torch.from_numpy(scenes["images"]))
        return head(projector(feat))

    rng = np.random.default_rng(seed)
    curve: list[float] = []
    t0 = time.time()
    for step in range(steps):
        scenes = make_scenes(rng, batch_size, size)
        target = torch.from_numpy(scenes["centres"][:, 0] / size)
        loss = ((predict(scenes) - target) ** 2).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(loss.item())
        if (step + 1) % log_every == 0:
            print(f"{fusion} s{seed} step {step + 1}/{steps}: loss {statistics.fmean(curve[-log_every:]):.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    if save_encoder is not None:
        save_beit3_state_dict(encoder, save_encoder)
    held_out = make_scenes(np.random.default_rng(10_000 + seed), eval_scenes, size)
    with torch.no_grad():
        points = predict(held_out).numpy() * size
    return {"fusion": fusion, "seed": seed, "encoder": "beit3_tiny", "feature": encoder.feature, "steps": steps,
            "batch_size": batch_size, "lr": lr, "size": size, "patch_size": patch_size, "eval_scenes": eval_scenes,
            "tokenizer": None if tokenizer_dir is None else str(tokenizer_dir), "vocab_size": vocab,
            "encoder_checkpoint": None if save_encoder is None else str(save_encoder),
            "seconds": round(time.time() - t0, 1), "final_loss": statistics.fmean(curve[-min(len(curve), 100):]),
            "curve": [statistics.fmean(curve[i:i + log_every]) for i in range(0, len(curve), log_every)],
            "scores": score(points, held_out)}


def summarise(results: list[dict]) -> str:
    """Markdown: per fusion (in Tab. 3's order) hit % and distance as mean ± sample std over seeds, then the
    text-blind pointers (averaged over the runs' held-out sets)."""
    by_fusion: dict[str, list[dict]] = {}
    for r in results:
        by_fusion.setdefault(r["fusion"], []).append(r)

    def cell(vals: list[float], fmt: str) -> str:
        if len(vals) == 1:
            return format(vals[0], fmt)
        return f"{format(statistics.fmean(vals), fmt)} ± {format(statistics.stdev(vals), fmt)}"

    lines = ["| prompt (tiny BEiT-3) | hit (%) | distance (px) | seeds |", "|---|---|---|---|"]
    for fusion in sorted(by_fusion, key=lambda f: FUSIONS.index(f) if f in FUSIONS else len(FUSIONS)):
        runs = by_fusion[fusion]
        hits = [r["scores"]["model"]["hit"] for r in runs]
        dists = [r["scores"]["model"]["dist"] for r in runs]
        lines.append(f"| {fusion} | {cell(hits, '.1f')} | {cell(dists, '.2f')} | "
                     f"{', '.join(str(r['seed']) for r in sorted(runs, key=lambda r: r['seed']))} |")
    for p, label in (("centre", "text-blind: image centre"), ("object", "text-blind: a random disc")):
        hit = statistics.fmean(r["scores"][p]["hit"] for r in results)
        dist = statistics.fmean(r["scores"][p]["dist"] for r in results)
        lines.append(f"| {label} | {hit:.1f} | {dist:.2f} | – |")
    return "\n".join(lines)


def load_results(out: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(out.glob("*_s*.json"))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="output directory (one <fusion>_s<seed>.json per run)")
    p.add_argument("--fusion", nargs="+", default=["text", "late", "early"], choices=FUSIONS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32, help="scenes per step")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--eval-scenes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="read the sentences with this BEiT-3 tokenizer directory (e.g. a pilot run's tokenizer/)")
    p.add_argument("--save-encoder", action="store_true",
                   help="also write OUT/<fusion>_s<seed>_encoder.pth (a BEiT-3 .pth for model.encoder_checkpoint)")
    p.add_argument("--summary", action="store_true", help="print the table of the runs in OUT and exit")
    args = p.parse_args(argv)
    from evf_sam.atomic import atomic_write_text

    if not args.summary:
        args.out.mkdir(parents=True, exist_ok=True)
        for fusion in args.fusion:
            for seed in args.seeds:
                r = run_probe(fusion, seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              eval_scenes=args.eval_scenes, threads=args.threads, tokenizer_dir=args.tokenizer,
                              save_encoder=args.out / f"{fusion}_s{seed}_encoder.pth" if args.save_encoder else None)
                atomic_write_text(args.out / f"{fusion}_s{seed}.json", json.dumps(r, indent=1) + "\n")
                m = r["scores"]["model"]
                print(f"{fusion} s{seed}: hit {m['hit']:.1f}% dist {m['dist']:.2f} px ({r['seconds']:.0f} s)",
                      flush=True)
    results = load_results(args.out)
    if not results:
        p.error(f"no probe results (<fusion>_s<seed>.json) in {args.out}: run the probe there first")
    print(summarise(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

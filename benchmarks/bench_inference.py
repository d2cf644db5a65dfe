"""Inference speed: batched EvfSamPredictor vs the naive official loop (one full call per prompt).

    python benchmarks/bench_inference.py --size tiny --prompts 8 --repeats 5
    python benchmarks/bench_inference.py --checkpoint evf-sam --device cuda --precision bf16 --prompts 16

Prints, side by side:
  * latency of one image + one prompt (set_image + predict([p]));
  * prompts/s for one image with K prompts: batched (set_image once + one predict of K prompts),
    cached image but one predict per prompt, and naive (set_image + predict per prompt, as the
    official inference script run K times).
``--size`` builds random weights (tiny / base = vit_h + BEiT-3-Base / large = vit_h + BEiT-3-Large)
with a small test tokenizer; ``--checkpoint`` loads a real directory. Figures only, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.predictor import EvfSamPredictor  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SIZES = {"tiny": None, "base": ("vit_h", "beit3_base"), "large": ("vit_h", "beit3_large")}
PROMPTS = ["the big red circle on the left", "a small blue square", "the tiny green star at the top",
           "the yellow triangle in the middle", "the purple ellipse next to the big one",
           "the orange rectangle below the small one", "the white star above everything",
           "the black circle at the bottom"]


def build(args, tmp: Path) -> EvfSamPredictor:
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    if args.checkpoint:
        return EvfSamPredictor.from_pretrained(args.checkpoint, dtype=dtype, device=device)
    from evf_sam.models.evf_sam import EvfSamConfig, build_evf_sam
    from evf_sam.testing import build_tiny_model, make_tokenizer

    tok = make_tokenizer(tmp / "tok")
    torch.manual_seed(0)
    if args.size == "tiny":
        model = build_tiny_model(seed=0)
    else:
        sam, enc = SIZES[args.size]
        model = build_evf_sam(EvfSamConfig(sam_variant=sam, encoder=enc))
    return EvfSamPredictor(model.to(device=device, dtype=dtype).eval(), tokenizer=tok)


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--checkpoint", type=Path, help="real EVF-SAM directory (overrides --size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=list(DTYPES), default="fp32")
    p.add_argument("--prompts", type=int, default=8, help="K prompts on one image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        pred = build(args, Path(tmp))
    image = np.random.default_rng(0).integers(0, 256, (*args.image_size, 3), dtype=np.uint8)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    k = len(prompts)

    def one():
        pred.set_image(image)
        pred.predict(prompts[0])

    def batched():
        pred.set_image(image)
        pred.predict(prompts)

    def cached_loop():
        pred.set_image(image)
        for q in prompts:
            pred.predict(q)

    def naive():
        for q in prompts:
            pred.set_image(image)
            pred.predict(q)

    t_one = timed(one, device, args.repeats)
    t_batch = timed(batched, device, args.repeats)
    t_cached = timed(cached_loop, device, args.repeats)
    t_naive = timed(naive, device, args.repeats)
    what = str(args.checkpoint) if args.checkpoint else f"{args.size} (random weights)"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"EVF-SAM inference: {what}, {args.precision}, {dev}, image {args.image_size[0]}x{args.image_size[1]}, "
          f"K={k} prompts, median of {args.repeats}")
    rows = [
        ("1 image + 1 prompt (set_image + predict)", f"{t_one * 1e3:9.1f} ms", ""),
        (f"batched: set_image + predict({k} prompts)", f"{t_batch * 1e3:9.1f} ms", f"{k / t_batch:9.1f}"),
        (f"cached image, {k} x predict(1 prompt)", f"{t_cached * 1e3:9.1f} ms", f"{k / t_cached:9.1f}"),
        (f"naive: {k} x (set_image + predict)", f"{t_naive * 1e3:9.1f} ms", f"{k / t_naive:9.1f}"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'time':>12}  {'prompts/s':>9}")
    for name, t, rate in rows:
        print(f"{name:{w}}  {t:>12}  {rate:>9}")
    print(f"batched speed-up over naive: {t_naive / t_batch:.2f}x")


if __name__ == "__main__":
    main()

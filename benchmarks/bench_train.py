#!/usr/bin/env python
"""Training throughput (samples/s) with and without the frozen-SAM embedding cache, side by side.

    python benchmarks/bench_train.py --size tiny --steps 10            # CPU-friendly
    python benchmarks/bench_train.py --size large --micro-batch 16 --precision bf16   # one GPU, random weights
    python benchmarks/bench_train.py --size large --micro-batch 2 --steps 3 --warmup 1 --num-images 4   # CPU; needs > 14 GB free RAM
    python benchmarks/bench_train.py --size base --micro-batch 2 --steps 2 --warmup 1 --num-images 4    # CPU, fits in ~8 GB

Sizes (random weights, random data: `data=random`): tiny (SAM tiny + beit3_tiny), base (SAM ViT-B +
BEiT-3-B), large (SAM ViT-H + BEiT-3-L, the paper's model). Each configuration runs the real trainer
(DeepSpeed ZeRO-2, 1 process) in a subprocess; the first `--warmup` steps are dropped. The peak resident
memory of each run is printed (large in fp32 on CPU: AdamW states of BEiT-3-L + ZeRO buffers + SAM-H),
with the load average at the start and the end (the figures are wall-clock: on a shared machine, say so).
The cached run builds its cache first (fast SAM encoder in bf16, `data.embedding_cache_*`); only the
training steps are timed.

Measured on the shared 2-core CPU (24 GiB, 8-16 GB of it used by other sessions): --size large in fp32
was OOM-killed twice during its first step at 13.5-13.7 GB resident (ZeRO-2 + AdamW over BEiT-3-L +
SAM-H in the loop; smaller ZeRO buckets, 5e7, did not lower that), so it needs a machine with more
free memory. --size base --micro-batch 2 --steps 1 --warmup 0 --num-images 2 (nice -n 10, load 17 -> 11):
478.3 s per step without the cache, 96.0 s with it (x4.98), 8.7 GiB peak each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {
    "tiny": ["model=tiny"],
    # a tiny tokenizer stands in for BEiT-3's (text embedding 128 rows instead of 64010; negligible compute)
    "base": ["model=evf_sam_base", "model.sam_variant=vit_b", "model.tokenizer=null", "model.make_tiny_tokenizer=true"],
    "large": ["model=evf_sam_large", "model.tokenizer=null", "model.make_tiny_tokenizer=true"],
}


peak_gib: dict[bool, float] = {}  # cache? -> peak resident memory of that training process


def run(size: str, cache: bool, args, work: Path) -> list[float]:
    run_dir = work / f"{size}_{'cache' if cache else 'nocache'}"
    ov = [*SIZES[size], "data=random", "logger=none", f"run_dir={run_dir}", "resume=none",
          f"trainer.total_steps={args.steps + args.warmup}", f"trainer.micro_batch_size={args.micro_batch}",
          f"trainer.grad_accum={args.grad_accum}", f"trainer.precision={args.precision}",
          f"trainer.device={args.device}", "trainer.ckpt_every=-1", "trainer.val_every=0", "trainer.val_at_end=false",
          "trainer.progress_bar=false", f"data.num_images={args.num_images}", f"data.num_workers={args.workers}"]
    if cache:
        ov.append(f"data.embedding_cache={work / 'cache'}")
    ov += args.override
    log = work / f"{run_dir.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/train.py"), *ov], stdout=f, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak resident memory
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_gib[cache] = usage.ru_maxrss / 2**20  # kilobytes on Linux
    if proc.returncode != 0:
        sys.exit(f"{size} cache={cache} failed:\n{log.read_text()[-6000:]}")
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["samples_per_s"] for r in recs if r["type"] == "train"][args.warmup:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-images", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Hydra overrides for both runs (e.g. trainable=enc_proj)")
    args = ap.parse_args()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        res = {c: run(args.size, c, args, work) for c in (False, True)}
    load1 = os.getloadavg()
    per_step = args.micro_batch * args.grad_accum  # samples per optimizer step (1 process)
    print(f"size={args.size} micro-batch={args.micro_batch} accumulation={args.grad_accum} "
          f"precision={args.precision} steps={args.steps} (+{args.warmup} warm-up) threads={os.cpu_count()} cpus")
    print(f"load average (1/5/15 min): start {' '.join(f'{x:.1f}' for x in load0)}, "
          f"end {' '.join(f'{x:.1f}' for x in load1)}")
    print(f"{'step':>4}  {'no cache (samples/s, s/step)':>30}  {'cache (samples/s, s/step)':>27}")
    for i, (a, b) in enumerate(zip(res[False], res[True])):
        print(f"{i + args.warmup + 1:>4}  {a:>18.3f} {per_step / a:>11.1f}  {b:>15.3f} {per_step / b:>11.1f}")
    ma, mb = statistics.median(res[False]), statistics.median(res[True])
    print(f"{'med':>4}  {ma:>18.3f} {per_step / ma:>11.1f}  {mb:>15.3f} {per_step / mb:>11.1f}   "
          f"speed-up x{mb / ma:.2f} per step with the embedding cache")
    print(f"peak resident memory (GiB): no cache {peak_gib[False]:.1f}, cache {peak_gib[True]:.1f}")


if __name__ == "__main__":
    main()

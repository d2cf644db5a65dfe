#!/usr/bin/env python
"""EVF-SAM inference speed, side by side in one run: the reference path (what the official code does)
against ours, per image and per prompt, with peak memory and the mask IoU against the fp32 reference.

    python benchmarks/bench_sam.py --size tiny                            # seconds, a quick check
    nice -n 5 python benchmarks/bench_sam.py --size large --threads 2     # SAM-H + BEiT-3-L, CPU (~15 min)
    python benchmarks/bench_sam.py --size large --device cuda --compile   # GPU: adds TFLOP/s vs the device peak
    python benchmarks/bench_sam.py --checkpoint evf-sam --quant int8 bnb-int8 bnb-nf4

Settings (rows):
  ref-<p>      segment-anything's eager ``ImageEncoderViT``, the whole model cast to <p> (the official
               ``--precision``), ONE FULL CALL PER PROMPT (image encoding + BEiT-3 + decoder each time,
               as the official inference script). Its N-prompt time is N x one measured call (the image
               encoding is deterministic work; see --ref-repeats). fp32 always; bf16 / fp16 where the
               device runs them natively (CPU: oneDNN AVX512-BF16 / AMX and AVX512-FP16 checks).
  ours-fp32    our `FastImageEncoderViT` (SDPA with the relative-position bias), everything fp32,
               image encoded once, the N prompts in one batch (`EvfSamPredictor`).
  ours-bf16    the same in mixed precision: the SAM blocks' linear layers and attention in bf16 (fp32
               residual stream, norms, position terms, neck), BEiT-3 + projector linears in bf16 with
               fp32 activations (`quantize_prompt_encoder(model, "bf16")`), mask upsampling in fp32.
  ours-bf16+Q  ours-bf16 with BEiT-3 + projector quantized (--quant: int8 = torch dynamic int8,
               bnb-int8 / bnb-nf4 = bitsandbytes as the official --load_in_8bit / --load_in_4bit);
               SAM and the image embedding are those of ours-bf16 (its image time is reused).
  ours-bf16-compiled   ours-bf16 with the SAM blocks under torch.compile (--compile).

Random weights (--size) get non-zero position tables (SAM ``pos_embed`` / ``rel_pos_*`` ~ N(0, 0.02); they
are zero-initialised otherwise and would leave the relative-position path untested); --checkpoint loads
a real directory. IoU = |A and B| / |A or B| of the boolean masks at the image's size, per prompt, against
ref-fp32, mean (min) over the prompts; a setting "keeps the masks" when the mean over all prompts is >= the
threshold (--iou-threshold 0.99). Memory: weights as configured, and the peak increase of the
process's resident memory (CPU) or of allocated CUDA memory (GPU) during the setting's calls. Figures,
not a test: on a shared machine wall times vary (the load average is printed; --clock cpu counts this
process's CPU seconds instead).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.models.sam_encoder import sdpa_backend_report, use_fast_sam_encoder  # noqa: E402
from evf_sam.precision import PRECISIONS, dtype_of  # noqa: E402
from evf_sam.predictor import EvfSamPredictor  # noqa: E402
from evf_sam.quantize import QUANT_MODES, quantize_prompt_encoder  # noqa: E402

SIZES = {"tiny": ("tiny", "beit3_tiny"), "base": ("vit_h", "beit3_base"), "large": ("vit_h", "beit3_large")}
PROMPTS = ["the big red circle on the left", "a small blue square", "the tiny green star at the top",
           "the yellow triangle in the middle", "the purple ellipse next to the big one",
           "the orange rectangle below the small one", "the white star above everything",
           "the black circle at the bottom"]
# Dense bf16/fp16 tensor-core peak (TFLOP/s, fp32 accumulation) by device-name substring, most specific first.
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.2),
               ("V100", 125.0)]


@dataclass
class Result:
    name: str
    encoder: str
    prompt_side: str
    image_s: float = math.nan  # one image encoding (set_image)
    total_s: dict[int, float] = field(default_factory=dict)  # N -> image + N prompts on that image
    extrapolated: bool = False  # N x one full call (reference)
    weights_gib: float = math.nan
    peak_gib: float = math.nan
    iou: dict[int, tuple[float, float]] = field(default_factory=dict)  # N -> (mean, min) vs ref-fp32
    flops: dict[int, float] = field(default_factory=dict)  # N -> FLOPs of image + N prompts (CUDA)
    compile_s: float | None = None


# ---------------------------------------------------------------------------------------------
# measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak increase of resident memory (CPU: /proc/self/statm sampled every 5 ms) or of allocated CUDA
    memory during the ``with`` block, in GiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_gib = math.nan

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            _malloc_trim()  # memory freed by earlier settings would otherwise be reused without showing in RSS
            self._base = self._peak = self._rss()
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(0.005):
                    self._peak = max(self._peak, self._rss())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_gib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**30
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self.peak_gib = (max(self._peak, self._rss()) - self._base) / 2**30


def _malloc_trim() -> None:
    """Returns free heap memory to the OS (glibc); no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def timed(fn, device: torch.device):
    sync(device)
    t = clock()
    out = fn()
    sync(device)
    return clock() - t, out


def weight_gib(model: torch.nn.Module) -> float:
    """Bytes of the weights as stored (quantized layers at their packed size)."""
    n = sum(t.numel() * t.element_size() for t in model.parameters())
    n += sum(t.numel() * t.element_size() for t in model.buffers())
    try:  # torch dynamic-int8 layers keep their weights in packed params, not parameters
        from torch.ao.nn.quantized.dynamic import Linear as DQLinear

        for m in model.modules():
            if isinstance(m, DQLinear):
                w, b = m._weight_bias()
                n += w.numel() + (0 if b is None else b.numel() * b.element_size())
    except ImportError:
        pass
    return n / 2**30


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


# ---------------------------------------------------------------------------------------------
# models


def build_model(args, tmp: Path):
    """(fp32 EvfSam on the device, tokenizer)."""
    device = torch.device(args.device)
    if args.checkpoint:
        pred = EvfSamPredictor.from_pretrained(args.checkpoint, dtype=torch.float32, device=device)
        from evf_sam.models.sam_encoder import use_reference_sam_encoder

        use_reference_sam_encoder(pred.model)  # the official arithmetic first (the default is the fast encoder)
        return pred.model, pred.tokenizer
    from evf_sam.models.encoders import load_encoder_tokenizer
    from evf_sam.models.evf_sam import EvfSamConfig, build_evf_sam
    from evf_sam.testing import make_tokenizer

    tok_dir = make_tokenizer(tmp / "tok")
    sam_variant, encoder = SIZES[args.size]
    torch.manual_seed(args.seed)
    overrides = {"vocab_size": 1000} if args.size == "tiny" else {}
    model = build_evf_sam(EvfSamConfig(sam_variant=sam_variant, encoder=encoder, encoder_overrides=overrides,
                                       sam_encoder="reference"))  # the official arithmetic first
    with torch.no_grad():
        for name, p in model.sam.image_encoder.named_parameters():
            if "pos" in name:  # pos_embed, rel_pos_h, rel_pos_w
                p.normal_(0.0, 0.02)
    return model.to(device).eval(), load_encoder_tokenizer(encoder, tok_dir)


def native_precisions(device: torch.device) -> list[str]:
    """fp32 plus the low precisions the device runs natively."""
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    out = ["fp32"]
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        out.append("bf16")
    return out  # fp16 on CPU: add it with --ref-precisions (AVX512-FP16 GEMMs are not faster than fp32 here)


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """A reproducible image with structure (bicubically upsampled coarse noise), H x W x 3 uint8."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


# ---------------------------------------------------------------------------------------------
# the two paths


def run_reference(model, tok, precision: str, image, prompts, ns, args, device, base_masks) -> tuple[Result, list]:
    """One full call per prompt. The first prompt's call is timed (--ref-repeats times); the other prompts
    reuse that image embedding only to get their masks (identical to a full call's)."""
    m = model if precision == "fp32" else copy.deepcopy(model).to(dtype_of(precision))
    pred = EvfSamPredictor(m, tokenizer=tok)
    res = Result(f"ref-{precision}", "segment-anything (eager)", precision, extrapolated=True,
                 weights_gib=weight_gib(m))
    calls, images = [], []
    with PeakMemory(device) as mem:
        for _ in range(args.ref_repeats):
            t_img, _ = timed(lambda: pred.set_image(image), device)
            t_p, first = timed(lambda: pred.predict(prompts[0]), device)
            calls.append(t_img + t_p)
            images.append(t_img)
        masks = [first.masks[0]] + [pred.predict(p).masks[0] for p in prompts[1:]]
    res.peak_gib = mem.peak_gib
    res.image_s = statistics.median(images)
    call = statistics.median(calls)
    for n in ns:
        res.total_s[n] = n * call
    if device.type == "cuda":
        f = count_flops(lambda: pred(image, prompts[0]))
        res.flops = {n: n * f for n in ns}
    if base_masks is not None:
        ious = [mask_iou(a, b) for a, b in zip(masks, base_masks)]
        for n in ns:
            res.iou[n] = (float(np.mean(ious[:n])), float(np.min(ious[:n])))
    return res, masks


def run_ours(name, model, tok, image, prompts, ns, args, device, base_masks, *, prompt_side: str,
             image_s: float | None = None, pred: EvfSamPredictor | None = None) -> Result:
    """Image encoded once, then N prompts in one batch. ``image_s`` given: reuse that image time (and
    ``pred``'s image embedding; the SAM is unchanged)."""
    enc = model.sam.image_encoder
    enc_name = f"fast, {'fp32' if enc.compute_dtype in (None, torch.float32) else 'bf16 mixed'}"
    res = Result(name, enc_name + (", compiled" if "compiled" in name else ""), prompt_side,
                 weights_gib=weight_gib(model))
    reuse = image_s is not None
    pred = pred if reuse else EvfSamPredictor(model, tokenizer=tok)
    with PeakMemory(device) as mem:
        if not reuse:  # warm-up (and compilation)
            t, _ = timed(lambda: pred.set_image(image), device)
            if "compiled" in name:
                res.compile_s = t
        pred.predict(prompts[: max(ns)])
        if reuse:
            res.image_s = image_s
        else:
            res.image_s = statistics.median(timed(lambda: pred.set_image(image), device)[0]
                                            for _ in range(args.repeats))
        for n in ns:
            ts = []
            for _ in range(args.repeats):
                t, out = timed(lambda: pred.predict(prompts[:n]), device)
                ts.append(t)
            res.total_s[n] = res.image_s + statistics.median(ts)
            if base_masks is not None:
                ious = [mask_iou(a, b) for a, b in zip(out.masks, base_masks[:n])]
                res.iou[n] = (float(np.mean(ious)), float(np.min(ious)))
    res.peak_gib = mem.peak_gib
    if device.type == "cuda":
        f_img = count_flops(lambda: pred.set_image(image))
        res.flops = {n: f_img + count_flops(lambda: pred.predict(prompts[:n])) for n in ns}
    return res


# ---------------------------------------------------------------------------------------------
# report


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p for key, p in PEAK_TFLOPS if key in name), None)


def fmt_s(x: float) -> str:
    return "-" if math.isnan(x) else (f"{x:.4f}" if x < 0.1 else f"{x:.3f}" if x < 10 else f"{x:.1f}")


def table(results: list[Result], ns: list[int], threshold: float, peak: float | None) -> str:
    head = ["setting", "SAM image encoder", "BEiT-3 + projector", "image (s)"]
    head += [f"{n} prompt{'s' if n > 1 else ''} (s)" for n in ns]
    head += [f"per prompt @{max(ns)} (s)", "weights (GiB)", "peak +mem (GiB)", f"mask IoU @{max(ns)} mean (min)"]
    if peak:
        head.append(f"TFLOP/s @{max(ns)} (% of {peak:.0f})")
    rows = [head, ["---"] * len(head)]
    for r in results:
        n = max(ns)
        per_prompt = (r.total_s[n] / n) if r.extrapolated else (r.total_s[n] - r.image_s) / n
        iou = r.iou.get(n)
        row = [r.name + (" *" if r.extrapolated else ""), r.encoder, r.prompt_side, fmt_s(r.image_s)]
        row += [fmt_s(r.total_s[k]) for k in ns]
        row += [fmt_s(per_prompt), f"{r.weights_gib:.2f}", f"{r.peak_gib:.2f}",
                "reference" if iou is None else f"{iou[0]:.4f} ({iou[1]:.4f})" + (" ✓" if iou[0] >= threshold else " ✗")]
        if peak:
            fl = r.flops.get(n)
            row.append("-" if not fl else f"{fl / r.total_s[n] / 1e12:.1f} ({100 * fl / r.total_s[n] / 1e12 / peak:.0f}%)")
        rows.append(row)
    return "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows)


def keeps_masks(r: Result, ns: list[int], threshold: float) -> bool:
    """Mean IoU over ALL prompts (the largest N) >= threshold: a setting qualifies for every N or none."""
    return r.name == "ref-fp32" or r.iou.get(max(ns), (0.0,))[0] >= threshold


def speedups(results: list[Result], ns: list[int], threshold: float) -> list[str]:
    lines = []
    refs = [r for r in results if r.extrapolated and keeps_masks(r, ns, threshold)]
    ours = [r for r in results if not r.extrapolated and keeps_masks(r, ns, threshold)]
    for n in ns:
        ref = min(refs, key=lambda r: r.total_s[n])
        best = min(ours, key=lambda r: r.total_s[n], default=None)
        if best is None:
            lines.append(f"{n} prompt(s): no setting of ours keeps mean IoU >= {threshold}")
            continue
        lines.append(f"{n:>2} prompt(s) on one image: {best.name} {fmt_s(best.total_s[n])} s vs {ref.name} "
                     f"{fmt_s(ref.total_s[n])} s -> {ref.total_s[n] / best.total_s[n]:.1f}x")
    return lines


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--size", choices=list(SIZES), default="tiny",
                   help="random weights: tiny (toy), base (SAM-H + BEiT-3-B), large (SAM-H + BEiT-3-L)")
    p.add_argument("--checkpoint", type=Path, help="an EVF-SAM directory (overrides --size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 16], help="prompt counts on one image")
    p.add_argument("--ref-precisions", nargs="+", choices=list(PRECISIONS), default=None,
                   help="reference precisions (default: fp32 + what the device runs natively)")
    p.add_argument("--ref-repeats", type=int, default=None, help="timed reference calls (default 1 CPU, 3 CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of ours (default 2 CPU, 10 CUDA)")
    p.add_argument("--no-ours-fp32", action="store_true", help="skip ours-fp32 (slow on CPU)")
    p.add_argument("--compile", action="store_true", help="add ours-bf16-compiled (torch.compile of the SAM blocks)")
    p.add_argument("--quant", nargs="*", default=None, choices=[m for m in QUANT_MODES if m not in ("bf16", "fp16")],
                   help="BEiT-3 + projector quantization rows (default: int8 on CPU, bnb-int8 bnb-nf4 if installed)")
    p.add_argument("--iou-threshold", type=float, default=0.99)
    p.add_argument("--image-size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 dense peak (TFLOP/s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=list(CLOCK), default="wall",
                   help="wall: elapsed seconds; cpu: this process's CPU seconds (all threads), steadier on a "
                        "shared CPU (includes OpenMP spin-waits)")
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    args.ref_repeats = args.ref_repeats or (3 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 2)
    if args.quant is None:
        args.quant = [] if cuda else ["int8"]
        try:
            import bitsandbytes  # noqa: F401

            args.quant += ["bnb-int8", "bnb-nf4"]
        except ImportError:
            pass
    return args


def main(argv=None) -> dict[str, Result]:
    global clock
    args = parse_args(argv)
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # ref-fp32 is the IoU baseline: true fp32
    torch.backends.cudnn.allow_tf32 = False
    ns = sorted(set(args.prompts))
    prompts = [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" number {i}") for i in range(max(ns))]
    image = smooth_image(*args.image_size, seed=args.seed)
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model, tok = build_model(args, Path(tmp))
    what = str(args.checkpoint) if args.checkpoint else f"--size {args.size} (random weights)"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU x{torch.get_num_threads()} threads ({torch.backends.cpu.get_cpu_capability()})"
    print(f"# EVF-SAM inference: {what}, {dev}, torch {torch.__version__}, image "
          f"{args.image_size[0]}x{args.image_size[1]}, prompts {ns}, {args.clock} clock")
    for dt in (torch.float32, torch.bfloat16):
        if device.type == "cuda" or dt == torch.float32 or "bf16" in native_precisions(device):
            rep = sdpa_backend_report(device, dt)
            print(f"# SDPA with a float bias, {str(dt)[6:]}: " + ", ".join(k for k, v in rep.items() if v))
    sys.stdout.flush()

    results: list[Result] = []
    base_masks = None
    for prec in args.ref_precisions or native_precisions(device):
        res, masks = run_reference(model, tok, prec, image, prompts, ns, args, device, base_masks)
        if prec == "fp32":
            base_masks = masks
            fg = float(np.mean([m.float().mean().item() for m in masks]))
            print(f"# ref-fp32 masks cover {100 * fg:.1f}% of the image on average")
        results.append(res)
        print(f"# {res.name}: one full call {fmt_s(res.total_s[ns[0]] / ns[0])} s", flush=True)
    if base_masks is None:
        raise SystemExit("--ref-precisions must include fp32 (the IoU baseline)")

    if not args.no_ours_fp32:
        use_fast_sam_encoder(model, compute_dtype=None)
        results.append(run_ours("ours-fp32", model, tok, image, prompts, ns, args, device, base_masks,
                                prompt_side="fp32"))
        print("# ours-fp32 done", flush=True)
    low = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    lname = "bf16" if low == torch.bfloat16 else "fp16"
    keep = {n: copy.deepcopy(getattr(model, n)) for n in ("encoder", "projector")} if args.quant else {}
    use_fast_sam_encoder(model, compute_dtype=low)
    quantize_prompt_encoder(model, lname)
    pred = EvfSamPredictor(model, tokenizer=tok)
    mixed = run_ours(f"ours-{lname}", model, tok, image, prompts, ns, args, device, base_masks,
                     prompt_side=f"{lname} linears")
    results.append(mixed)
    print(f"# ours-{lname} done", flush=True)
    if args.quant:
        pred.set_image(image)
        low_side = {n: getattr(model, n) for n in keep}
        for mode in args.quant:
            for n, mod in keep.items():
                setattr(model, n, copy.deepcopy(mod))
            try:
                quantize_prompt_encoder(model, mode)
            except (ImportError, ValueError, RuntimeError) as e:
                print(f"# ours-{lname}+{mode}: skipped ({e})")
                continue
            results.append(run_ours(f"ours-{lname}+{mode}", model, tok, image, prompts, ns, args, device,
                                    base_masks, prompt_side=mode, image_s=mixed.image_s, pred=pred))
            print(f"# ours-{lname}+{mode} done", flush=True)
        for n, mod in low_side.items():
            setattr(model, n, mod)
        del keep
    if args.compile:
        model.sam.image_encoder.compile_blocks()
        results.append(run_ours(f"ours-{lname}-compiled", model, tok, image, prompts, ns, args, device, base_masks,
                                prompt_side=f"{lname} linears"))

    load1 = os.getloadavg()
    print()
    print(table(results, ns, args.iou_threshold, peak_tflops(device, args.peak_tflops)))
    print()
    print(f"Times in {args.clock}-clock seconds. "
          "`*` one full call per prompt (image encoding + BEiT-3 + decoder); its N-prompt time is N x one "
          f"measured call (median of {args.ref_repeats}). Ours: image encoded once (median of {args.repeats}) "
          f"+ the N prompts in one batch (median of {args.repeats}). ✓/✗: mean IoU vs ref-fp32 >= "
          f"{args.iou_threshold}.")
    for r in results:
        if r.compile_s is not None:
            print(f"{r.name}: first call incl. compilation {r.compile_s:.1f} s")
    print(f"Load average {load0[0]:.1f} at start, {load1[0]:.1f} at the end (1 min).")
    print(f"Fastest setting whose mean IoU over all {max(ns)} prompts >= {args.iou_threshold}, ours vs reference:")
    for line in speedups(results, ns, args.iou_threshold):
        print("  " + line)
    print("(issue 15 targets, 2 CPU cores, SAM-H + BEiT-3-L: >= 2x for 1 prompt, 6x for 4, 12x for 16)")
    return {r.name: r for r in results}


if __name__ == "__main__":
    main()

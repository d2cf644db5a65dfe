"""Evaluates an EVF-SAM checkpoint on RefCOCO / RefCOCO+ / RefCOCOg (paper Table 2).

    python scripts/eval_refcoco.py checkpoint=/weights/evf-sam data.root=/data [precision=bf16]
    torchrun --nproc_per_node 4 scripts/eval_refcoco.py checkpoint=/weights/evf-sam data.root=/data

Config: configs/eval.yaml. Ranks split each split's images (r, r + W, ...) and all-reduce the
metric sums (gloo on CPU, NCCL on CUDA); rank 0 prints the cIoU / gIoU tables and writes
results.json, results.csv, results.md and config_resolved.yaml into the run dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from evf_sam.engine.evaluate import run_eval_from_config

    run_eval_from_config(cfg)


if __name__ == "__main__":
    main()

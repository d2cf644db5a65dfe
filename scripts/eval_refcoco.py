"""Evaluates an EVF-SAM checkpoint on RefCOCO / RefCOCO+ / RefCOCOg (paper Table 2).

    python scripts/eval_refcoco.py checkpoint=/weights/evf-sam data.root=/data [precision=bf16]
    python scripts/eval_refcoco.py run=runs/evf_sam            # a training run's final/ into runs/evf_sam/eval
    torchrun --nproc_per_node 4 scripts/eval_refcoco.py checkpoint=/weights/evf-sam data.root=/data

Config: configs/eval.yaml (`--help` shows it with examples). Every split's files and the checkpoint
are checked before the model is loaded; results.json / .csv / .md are updated after each split, and
the same command run again skips the splits already done (overwrite=true redoes them). Ranks split
each split's images (r, r + W, ...) and all-reduce the metric sums (gloo on CPU, NCCL on CUDA); rank
0 prints the cIoU / gIoU tables. Errors are one line (`EVF_SAM_DEBUG=1` shows the traceback).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import evf_sam.config  # noqa: E402,F401  (registers the config schemas: a wrong key or type fails at composition)
from evf_sam.engine.errors import reporting  # noqa: E402


@hydra.main(config_path="../configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from evf_sam.engine.evaluate import run_eval_from_config
    from evf_sam.engine.run_logging import setup_console_logging

    with reporting("eval_refcoco.py"):
        setup_console_logging(int(os.environ.get("RANK", "0")))
        run_eval_from_config(cfg)


if __name__ == "__main__":
    with reporting("eval_refcoco.py"):
        main()

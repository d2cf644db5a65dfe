#!/usr/bin/env python
"""Export a training checkpoint (checkpoints/step_N of a run) as an EVF-SAM inference directory.

    python scripts/export.py runs/evf_sam                         # newest complete checkpoint -> runs/evf_sam/exports/step_N
    python scripts/export.py runs/evf_sam --step 5000 --output exports/evf_sam_5k
    evf-sam predict --checkpoint exports/evf_sam_5k --image img.jpg --prompt "the dog on the left"
    python scripts/eval_refcoco.py checkpoint=exports/evf_sam_5k data.root=/data

The directory is what the trainer writes as final/ (config.json, model.safetensors, the run's
tokenizer): EvfSam.from_pretrained, the predictor, the CLI and scripts/eval_refcoco.py read it. The
checkpoint's model file is verified against the sizes / hashes recorded when it was written and read
with torch.load(weights_only=True). Errors are one line (EVF_SAM_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.engine.errors import reporting  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    from evf_sam.engine.export import export_checkpoint
    from evf_sam.engine.run_logging import setup_console_logging

    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(prog="export.py", description=doc[0], epilog="examples:\n" + doc[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="training run directory (the run_dir of scripts/train.py)")
    ap.add_argument("--step", default="latest",
                    help="checkpoint step to export (an integer, or 'latest': the newest complete one)")
    ap.add_argument("--output", type=Path, default=None, help="output directory (default RUN_DIR/exports/step_N)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    args = ap.parse_args(argv)
    setup_console_logging(0)
    out = export_checkpoint(args.run_dir, step=args.step, output=args.output, overwrite=args.overwrite)
    print(out)
    return out


if __name__ == "__main__":
    with reporting("export.py"):
        main()

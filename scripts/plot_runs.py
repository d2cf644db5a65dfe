#!/usr/bin/env python
"""Training curves (loss, BCE, Dice, LR, samples/s, validation cIoU) from metrics.jsonl as a PNG.

    python scripts/plot_runs.py runs/evf_sam                       # -> runs/evf_sam/plots/curves.png
    python scripts/plot_runs.py runs/table3/*  --output t3.png     # the rows of a sweep on one figure
    python scripts/plot_runs.py runs/table3                        # same: every run dir under it

The trainer writes <run_dir>/plots/curves.png itself at the end of each run (evf_sam/engine/plots.py).
Errors are one line (EVF_SAM_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evf_sam.engine.errors import reporting  # noqa: E402


def main(argv: list[str] | None = None) -> Path:
    from evf_sam.engine.plots import find_runs, plot_run, plot_runs

    ap = argparse.ArgumentParser(prog="plot_runs.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.split("\n\n")[1:2]))
    ap.add_argument("runs", nargs="+", type=Path, help="training run directories (or a sweep directory holding them)")
    ap.add_argument("--output", type=Path, default=None,
                    help="PNG path (default: RUN_DIR/plots/curves.png for one run, else curves.png in the runs' "
                         "common parent directory)")
    args = ap.parse_args(argv)
    runs = find_runs(args.runs)
    if len(runs) == 1:
        out = plot_run(runs[0], args.output)
    else:
        common = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
        out = plot_runs(runs, args.output or common / "curves.png")
    print(f"{out.path}  ({len(runs)} run{'s' if len(runs) > 1 else ''}: {', '.join(str(r) for r in runs)})")
    return out.path


if __name__ == "__main__":
    with reporting("plot_runs.py"):
        main()

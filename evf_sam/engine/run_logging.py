"""Run logging: the console / ``train.log`` handlers of a run.

    setup_logging(run_dir, rank)     # rank 0: INFO to stdout and run_dir/train.log; others: WARNING to stderr

Every module logs through its own ``logging.getLogger(__name__)``; this only installs the handlers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["setup_logging"]


def setup_logging(run_dir: Path, rank: int) -> None:
    """(Re)installs our handlers on the root logger (idempotent: earlier ones of ours are removed)."""
    root = logging.getLogger()
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for h in list(root.handlers):
        if getattr(h, "_evf_sam", False):
            root.removeHandler(h)
    if rank == 0:
        handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(Path(run_dir) / "train.log")]
        root.setLevel(logging.INFO)
    else:
        handlers = [logging.StreamHandler(sys.stderr)]
        root.setLevel(logging.WARNING)
    for h in handlers:
        h.setFormatter(fmt)
        h._evf_sam = True
        root.addHandler(h)

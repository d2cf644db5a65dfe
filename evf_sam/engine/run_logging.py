"""Run logging: the console / ``train.log`` handlers and the metric records of a run.

    setup_logging(run_dir, rank)     # rank 0: INFO to stdout and run_dir/train.log; others: WARNING to stderr
    log = RunLogger(run_dir, rank=rank, logger=typed(cfg.logger), run_name=cfg.name, config=resolved(cfg))
    log.start()                      # wandb (logger=wandb) on rank 0
    log.log({"type": "train", "step": 1, "loss": 0.9, ...})     # a line of run_dir/metrics.jsonl (+ wandb)

Every module logs through its own ``logging.getLogger(__name__)``; `setup_logging` only installs the
handlers.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "setup_logging"]


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


class RunLogger:
    """The run's metric records: one JSON line each in ``metrics.jsonl`` and, with ``logger=wandb``,
    Weights & Biases (numbers only, as ``<type>/<key>``). Writes on rank 0 only.

    ``logger``: the typed ``logger`` group (`config.LoggerConfig` for none, `config.WandbLoggerConfig`);
    `start` opens the tracker (after resume, so a resumed run continues its wandb run).
    """

    def __init__(self, run_dir: Path, *, rank: int, logger: Any, run_name: str, config: dict | None = None):
        self.run_dir, self.rank = Path(run_dir), int(rank)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.logger_config, self.run_name, self.config = logger, str(run_name), config
        self.backend = None

    def start(self) -> None:
        settings = self.logger_config
        if self.rank != 0 or settings.name == "none":
            return
        if settings.name != "wandb":
            raise ValueError(f"logger={settings.name!r}: choose wandb or none")
        import wandb

        mode = settings.mode or ("online" if settings.project else "offline")
        self.backend = wandb.init(project=settings.project or "evf-sam", entity=settings.entity, name=self.run_name,
                                  dir=str(self.run_dir), mode=mode, resume="allow", id=settings.run_id or None,
                                  config=self.config)

    def log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.backend is not None:
            prefix = record.get("type", "train")
            self.backend.log({f"{prefix}/{k}": v for k, v in record.items()
                              if isinstance(v, (int, float)) and k != "step"}, step=record.get("step"))

    def finish(self) -> None:
        if self.backend is not None:
            self.backend.finish()

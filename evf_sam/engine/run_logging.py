"""Run logging: the console / log-file handlers and the metric records of a run.

    setup_logging(run_dir, rank)     # our messages to the console (rank 0), everything to train.log / train.rank{r}.log
    with prints_to_log("deepspeed"): # a library's print() output into the log file only
        engine = deepspeed.initialize(...)
    log = RunLogger(run_dir, rank=rank, logger=typed(cfg.logger), run_name=cfg.name, config=resolved(cfg))
    log.rewind(step, final_step=T)   # resume: metrics.jsonl keeps what precedes the checkpoint of ``step``
    log.start(elapsed_s=state.elapsed_s)   # the run's clock; wandb (logger=wandb) on rank 0
    log.log({"type": "train", "step": 1, "loss": 0.9, ...})     # a line of run_dir/metrics.jsonl (+ wandb)

Every module logs through its own ``logging.getLogger(__name__)``; `setup_logging` only installs the
handlers. What goes where:

- console (stdout, rank 0 only): ``evf_sam.*`` records at INFO and above, any library's errors; written
  through ``tqdm.write``, so a line never lands inside an open progress bar. Ranks >= 1: errors only.
- ``train.log`` (rank 0) / ``train.rank{r}.log`` (rank r >= 1): every record at INFO and above, including
  what libraries say (DeepSpeed's logger and prints during initialisation, the op builds' compiler lines,
  torch's CUDA_HOME warning, Python warnings).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

__all__ = ["RunLogger", "keep_before_checkpoint", "prints_to_log", "route_library_logs", "setup_console_logging",
           "setup_logging"]

logger = logging.getLogger(__name__)

# Libraries that install their own console handler (and stop propagation): rerouted to ours.
_SELF_HANDLING_LOGGERS = ("torch", "DeepSpeed")


class _TqdmConsoleHandler(logging.StreamHandler):
    """A console handler that writes through ``tqdm.write``: an open bar is cleared, the line printed, the
    bar redrawn (plain printing would append the line to the bar's last refresh)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging must never raise
            self.handleError(record)


class _OursOrErrors(logging.Filter):
    """Our records (``evf_sam.*``) and every library's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith("evf_sam") or record.levelno >= logging.ERROR


def route_library_logs() -> None:
    """Sends the records of libraries with their own console handlers (`_SELF_HANDLING_LOGGERS`, as far
    as they are imported) and Python warnings through the root logger, i.e. to our handlers."""
    for name in _SELF_HANDLING_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):  # their console handlers (torch's writes to sys.stderr, not a StreamHandler)
            if not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    logging.captureWarnings(True)


def _install(handlers: list[logging.Handler], level: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_evf_sam", False):
            root.removeHandler(h)
            h.close()
    for h in handlers:
        h._evf_sam = True
        root.addHandler(h)
    root.setLevel(level)


def setup_logging(run_dir: Path, rank: int) -> None:
    """(Re)installs our handlers on the root logger (idempotent: earlier ones of ours are removed)."""
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    log_file = Path(run_dir) / ("train.log" if rank == 0 else f"train.rank{rank}.log")
    file_handler = logging.FileHandler(log_file)
    console = _TqdmConsoleHandler(sys.stdout if rank == 0 else sys.stderr)
    if rank == 0:
        console.addFilter(_OursOrErrors())
    else:
        console.setLevel(logging.ERROR)
    for h in (file_handler, console):
        h.setFormatter(fmt)
    _install([file_handler, console], logging.INFO)
    route_library_logs()


def setup_console_logging(rank: int = 0) -> None:
    """Scripts without a run log (evaluation, export): our INFO messages as plain lines on stdout (rank
    0; other ranks: errors on stderr), other libraries' warnings and errors on stderr."""
    ours = _TqdmConsoleHandler(sys.stdout if rank == 0 else sys.stderr)
    ours.setFormatter(logging.Formatter("%(message)s"))
    ours.addFilter(lambda r: r.name.startswith("evf_sam"))
    ours.setLevel(logging.INFO if rank == 0 else logging.ERROR)
    others = logging.StreamHandler(sys.stderr)
    others.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    others.addFilter(lambda r: not r.name.startswith("evf_sam"))
    others.setLevel(logging.WARNING if rank == 0 else logging.ERROR)
    _install([ours, others], logging.INFO)


class _LineLogger(io.TextIOBase):
    """A text stream that turns complete lines into INFO records of one logger."""

    def __init__(self, log: logging.Logger):
        self.log, self.pending = log, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.pending += s
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            if line.strip():
                self.log.info(line.rstrip())
        return len(s)

    def close_pending(self) -> None:
        if self.pending.strip():
            self.log.info(self.pending.rstrip())
        self.pending = ""


@contextlib.contextmanager
def prints_to_log(name: str) -> Iterator[None]:
    """Python-level ``print`` output (sys.stdout / sys.stderr) inside the block becomes INFO records of
    logger ``name`` (not ours, so: log file only). Our handlers keep the real streams."""
    writer = _LineLogger(logging.getLogger(name))
    try:
        with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
            yield
    finally:
        writer.close_pending()


def keep_before_checkpoint(record: dict[str, Any], step: int, final_step: int) -> bool:
    """Whether a metrics.jsonl record was logged before the checkpoint of ``step`` was written.

    The loop logs a step's train record, then (every val_every steps, before the last) validates, then
    saves; the final checkpoint precedes the final validation and evaluation. So: train records up to
    ``step``; val / eval records before ``step``, and at ``step`` unless it is the final step. Records
    without an integer step are kept."""
    s = record.get("step")
    if not isinstance(s, int):
        return True
    if record.get("type", "train") == "train":
        return s <= step
    return s < step or (s == step and step < final_step)


class RunLogger:
    """The run's metric records: one JSON line each in ``metrics.jsonl`` and, with ``logger=wandb``,
    Weights & Biases (numbers only, as ``<type>/<key>``). Writes on rank 0 only.

    Every record gets ``time`` (local wall-clock, ISO 8601) and ``elapsed_s`` (training seconds of the
    run: carried over resumes through `TrainState.elapsed_s`, without the time between a crash and the
    resume). ``logger``: the typed ``logger`` group (`config.LoggerConfig` for none,
    `config.WandbLoggerConfig`); `start` opens the tracker (after resume, so a resumed run continues
    its wandb run).
    """

    def __init__(self, run_dir: Path, *, rank: int, logger: Any, run_name: str, config: dict | None = None):
        self.run_dir, self.rank = Path(run_dir), int(rank)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.logger_config, self.run_name, self.config = logger, str(run_name), config
        self.backend = None
        self._elapsed0, self._t0 = 0.0, time.monotonic()

    def elapsed(self) -> float:
        """Training seconds of the run so far (see the class docstring)."""
        return self._elapsed0 + time.monotonic() - self._t0

    def rewind(self, step: int, *, final_step: int) -> None:
        """Rewrites metrics.jsonl (atomically) keeping the records logged before the checkpoint of ``step``
        (`keep_before_checkpoint`; all of them go when ``step`` is 0): the steps after it are run again,
        so after any number of resumes every step has one train record. Unparsable lines (a line cut by
        a crash) are dropped too."""
        if self.rank != 0 or not self.metrics_path.is_file():
            return
        from evf_sam.atomic import atomic_write_text

        kept, dropped, broken = [], 0, 0
        for line in self.metrics_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                broken += 1
                continue
            if isinstance(record, dict) and keep_before_checkpoint(record, step, final_step):
                kept.append(line)
            else:
                dropped += 1
        if dropped or broken:
            atomic_write_text(self.metrics_path, "".join(f"{x}\n" for x in kept))
            logger.info("metrics.jsonl: kept %d records up to step %d, removed %d logged after that checkpoint "
                        "(they are logged again)%s", len(kept), step, dropped,
                        f" and {broken} unreadable line(s)" if broken else "")

    def start(self, *, elapsed_s: float = 0.0) -> None:
        self._elapsed0, self._t0 = float(elapsed_s), time.monotonic()
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
        record = {**record, "time": datetime.now().astimezone().isoformat(timespec="milliseconds"),
                  "elapsed_s": round(self.elapsed(), 3)}
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.backend is not None:
            prefix = record.get("type", "train")
            self.backend.log({f"{prefix}/{k}": v for k, v in record.items()
                              if isinstance(v, (int, float)) and k != "step"}, step=record.get("step"))

    def finish(self) -> None:
        if self.backend is not None:
            self.backend.finish()

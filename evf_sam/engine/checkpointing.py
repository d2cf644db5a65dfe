"""Crash-safe DeepSpeed checkpoints of a run: tags, the ``complete`` marker with each file's size and
SHA-256, ``latest``, per-rank RNG state, pruning, verified resume with fall-back.

    ckpt = Checkpointer(run_dir / "checkpoints", rank=r, world_size=w, keep_last=2)
    ckpt.save(engine, state)                       # checkpoints/step_00001000/ (+ latest), all ranks
    resumed = ckpt.resume(engine, "auto", seed=42)  # (TrainState, tag dir) or None: start from step 0

Layout of one tag directory ``checkpoints/step_{step:08d}/``: DeepSpeed's files (model states, one
optimizer shard per rank), ``rng_rank{r}.pt`` (every RNG of rank r), ``trainer_state.json`` and, written
last, ``complete``: ``{"step", "world_size", "files": {name: {"size", "sha256"}}}`` (every other file of
the tag; rank r hashes the files it wrote). ``checkpoints/latest`` names the newest complete tag and is
replaced atomically after it. A tag without ``complete`` is an interrupted save: never resumed from,
deleted when the same step is saved again.

Resume trusts a checkpoint only after every rank has checked the files its marker lists (sizes on all
ranks, hashes split between them, as when written). One that fails is rejected: a warning names the
file, its ``complete`` becomes ``rejected`` (with the reason; the files are kept), and ``resume=auto``
falls back to the next newest complete checkpoint; `CheckpointError` when none is usable. Markers
written before the hashes existed (no ``files``) are used unverified, with a warning.

Nothing in a checkpoint is unpickled with the power to run code: the RNG files and DeepSpeed's files
are read by `safe_torch_load` (``torch.load(weights_only=True)``). DeepSpeed's engine reads its files
through ``engine.checkpoint_engine.load``, which in DeepSpeed 0.19.8 (TorchCheckpointEngine) calls
``torch.load(weights_only=False)`` with no option to change it; `harden_deepspeed_loading` replaces that
method on the engine's instance, allowing only the DeepSpeed classes a ZeRO-1/2 optimizer state holds
(loss scaler, ZeRO stage enum, fragment addresses; rebuilt from their fields, no code run).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from evf_sam.atomic import atomic_write_bytes, atomic_write_text
from evf_sam.engine import distributed as D
from evf_sam.engine.state import TrainState, rng_state, seed_everything, set_rng_state

__all__ = ["COMPLETE", "REJECTED", "CheckpointError", "Checkpointer", "checkpoint_tag", "complete_checkpoints",
           "file_record", "find_latest_checkpoint", "harden_deepspeed_loading", "read_marker", "safe_torch_load",
           "verify_files"]

logger = logging.getLogger(__name__)

COMPLETE = "complete"
REJECTED = "rejected"
LATEST = "latest"
TAG_RE = re.compile(r"step_(\d{8,})")
_CHUNK = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


def checkpoint_tag(step: int) -> str:
    return f"step_{int(step):08d}"


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Tag dirs under ``ckpt_dir`` with a ``complete`` marker, newest first."""
    if not Path(ckpt_dir).is_dir():
        return []
    tags = [(int(m.group(1)), d) for d in Path(ckpt_dir).iterdir()
            if (m := TAG_RE.fullmatch(d.name)) and d.is_dir() and (d / COMPLETE).is_file()]
    return [d for _, d in sorted(tags, reverse=True)]


def find_latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest tag dir under ``ckpt_dir`` that has the ``complete`` marker (None if none)."""
    done = complete_checkpoints(ckpt_dir)
    return done[0] if done else None


# -- file records ------------------------------------------------------------------------------------

def file_record(path: Path) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def _owner(name: str, world_size: int) -> int:
    """The rank that hashes ``name``: the writer of a per-rank file, rank 0 for the shared ones."""
    m = re.search(r"(?:zero_pp_rank_|rng_rank)(\d+)", name)
    return int(m.group(1)) % world_size if m else 0


def _tag_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file() and p.name not in (COMPLETE, REJECTED)
                  and not p.name.startswith("."))


def read_marker(tag_dir: Path) -> dict[str, Any]:
    """The ``complete`` marker of a tag dir as a dict (CheckpointError naming it when unreadable)."""
    f = Path(tag_dir) / COMPLETE
    try:
        marker = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{f}: not found ({tag_dir} is not a complete checkpoint)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable checkpoint marker ({e})") from None
    if not isinstance(marker, dict) or "step" not in marker:
        raise CheckpointError(f"{f}: not a checkpoint marker (expected a JSON object with 'step')")
    return marker


def verify_files(tag_dir: Path, files: dict[str, dict], *, rank: int = 0, world_size: int = 1) -> list[str]:
    """Problems of ``tag_dir``'s files against their records (empty: all good), as this rank sees them:
    every file's presence and size, and the SHA-256 of the files this rank hashes (`_owner`)."""
    problems = []
    for name, rec in sorted(files.items()):
        f = Path(tag_dir) / name
        if not f.is_file():
            problems.append(f"{f}: missing")
            continue
        size = os.path.getsize(f)
        if size != rec.get("size"):
            problems.append(f"{f}: {size} bytes, {rec.get('size')} when written (truncated or replaced)")
        elif _owner(name, world_size) == rank and file_record(f)["sha256"] != rec.get("sha256"):
            problems.append(f"{f}: SHA-256 differs from the one recorded when it was written (corrupted)")
    return problems


# -- loading without running code -------------------------------------------------------------------

def _deepspeed_safe_globals() -> list:
    """DeepSpeed classes a ZeRO-1/2 optimizer state file holds (by value; none runs code on load)."""
    found = []
    for module, names in (("deepspeed.runtime.fp16.loss_scaler", ("LossScaler", "DynamicLossScaler")),
                          ("deepspeed.runtime.zero.config", ("ZeroStageEnum",)),
                          ("deepspeed.utils.tensor_fragment", ("fragment_address",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        found += [getattr(mod, n) for n in names if hasattr(mod, n)]
    return found


def _torch_reason(e: BaseException) -> str:
    """The informative line of a torch.load error (its messages are paragraphs of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for key in ("GLOBAL", "Unsupported", "WeightsUnpickler error"):
        hit = [ln for ln in lines if key in ln]
        if hit:
            # torch goes on to suggest allow-listing the global: the opposite of what to do with such a file
            return hit[0].split(" Please use ")[0].split(". Please use")[0].rstrip(".")
    return lines[-1] if lines else type(e).__name__


def _legacy_rng_globals() -> list:
    """numpy's array reconstruction: RNG files written before `rng_state` stored numpy's key as a tensor."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def safe_torch_load(path: str | Path, map_location=None, *, extra_globals: list | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` (+ `_deepspeed_safe_globals`); CheckpointError naming the
    file when it is refused (an object that would run code) or unreadable (truncated, not a torch file)."""
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals() + list(extra_globals or [])):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _torch_reason(e)
        if "GLOBAL" in reason:  # an object outside the allowed ones: what a crafted file needs to run code
            raise CheckpointError(f"{path}: refused to unpickle it ({reason}); checkpoint files hold tensors and "
                                  f"plain values only, so this one was not written by the trainer or was tampered "
                                  f"with") from None
        raise CheckpointError(f"{path}: cannot be read ({reason}); the file is corrupted") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        # a zip archive cut short makes torch seek past its end: OSError EINVAL, which says nothing to a user
        reason = "it ends early" if isinstance(e, OSError) and e.errno == errno.EINVAL else _torch_reason(e)
        raise CheckpointError(f"{path}: cannot be read ({reason}); the file is truncated or corrupted") from None


def harden_deepspeed_loading(engine) -> None:
    """Makes ``engine.load_checkpoint`` read every file with `safe_torch_load` (see the module docstring)."""
    ce = getattr(engine, "checkpoint_engine", None)
    if ce is None:
        raise RuntimeError("this DeepSpeed engine has no checkpoint_engine; cannot make its loading safe")
    ce.load = lambda path, map_location=None: safe_torch_load(path, map_location)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


# -- the run's checkpoints ---------------------------------------------------------------------------

class Checkpointer:
    """Saves and restores the DeepSpeed engine + `TrainState` + RNG under ``ckpt_dir`` (every rank calls)."""

    def __init__(self, ckpt_dir: Path, *, rank: int, world_size: int, keep_last: int):
        self.ckpt_dir = Path(ckpt_dir)
        self.rank, self.world_size = int(rank), int(world_size)
        self.keep_last = int(keep_last)  # complete checkpoints kept; 0: all

    def save(self, engine, state: TrainState) -> Path:
        tag = checkpoint_tag(state.step)
        d = self.ckpt_dir / tag
        if self.rank == 0 and d.exists():  # a stale, incomplete (or rejected) attempt at the same step
            shutil.rmtree(d)
        D.barrier()
        engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state={"trainer_state": asdict(state)},
                               save_latest=False)
        buf = io.BytesIO()
        torch.save(rng_state(), buf)
        atomic_write_bytes(d / f"rng_rank{self.rank}.pt", buf.getvalue())
        if self.rank == 0:
            atomic_write_text(d / "trainer_state.json", json.dumps(asdict(state), indent=1))
        D.barrier()
        names = _tag_files(d)
        mine = {n: file_record(d / n) for n in names if _owner(n, self.world_size) == self.rank}
        records = {n: r for part in D.all_gather_object(mine) for n, r in part.items()}
        if self.rank == 0:
            marker = {"step": state.step, "world_size": self.world_size, "files": dict(sorted(records.items()))}
            atomic_write_text(d / COMPLETE, json.dumps(marker, indent=1))
            atomic_write_text(self.ckpt_dir / LATEST, tag)
            self.prune()
        D.barrier()
        logger.info("checkpoint %s written", d)
        return d

    def prune(self) -> None:
        """Deletes all but the newest ``keep_last`` complete checkpoints."""
        if self.keep_last <= 0:
            return
        for p in complete_checkpoints(self.ckpt_dir)[self.keep_last:]:
            shutil.rmtree(p, ignore_errors=True)

    def verify(self, path: Path) -> list[str]:
        """Every rank's problems with the checkpoint ``path`` (collective; the same list on every rank)."""
        try:
            marker = read_marker(path)
            files = marker.get("files")
            if files is None:
                local = []
                if self.rank == 0:
                    logger.warning("checkpoint %s has no file sizes / hashes (written by an older version): "
                                   "resuming from it unverified", path)
            else:
                local = verify_files(path, files, rank=self.rank, world_size=self.world_size)
        except CheckpointError as e:
            local = [str(e)]
        return sorted({p for part in D.all_gather_object(local) for p in part})

    def _reject(self, path: Path, problems: list[str]) -> None:
        """Renames the marker of a damaged checkpoint to ``rejected`` (reason inside; files kept)."""
        if self.rank == 0:
            try:
                marker = (path / COMPLETE).read_text()
            except OSError:
                marker = None
            atomic_write_text(path / REJECTED, json.dumps({"problems": problems, "complete": marker}, indent=1))
            (path / COMPLETE).unlink(missing_ok=True)
        D.barrier()

    def resume(self, engine, resume: str | None, *, seed: int) -> tuple[TrainState, Path] | None:
        """Loads model, optimizer, LR schedule, `TrainState` and this rank's RNG from a verified checkpoint.

        resume: "auto" (newest complete tag that verifies, falling back past damaged ones; None when
        there is none), "none" / None (None), or a tag dir (CheckpointError if it does not verify).
        Without an RNG file for this rank at this world size the RNGs are reseeded from
        ``(seed, step, rank)``.
        """
        if resume is None or str(resume) in ("none", "None", "false", "False"):
            return None
        resume = str(resume)
        harden_deepspeed_loading(engine)
        if resume == "auto":
            found = D.broadcast_object([str(p) for p in complete_checkpoints(self.ckpt_dir)])
            if not found:
                logger.info("resume=auto: no complete checkpoint in %s; starting from step 0", self.ckpt_dir)
                return None
        else:
            if not (Path(resume) / COMPLETE).is_file():
                raise FileNotFoundError(f"resume={resume!r}: {resume} is not a complete checkpoint (no "
                                        f"'{COMPLETE}' marker); pass a checkpoints/step_* directory or resume=auto")
            found = [resume]
        rejected = []
        for candidate in map(Path, found):
            problems = self.verify(candidate)
            if not problems:
                break
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            if resume != "auto":
                raise CheckpointError(f"resume={resume}: damaged checkpoint: {problems[0]}{more}")
            logger.warning("checkpoint %s is damaged: %s%s; it is marked '%s' and resume falls back to the previous "
                           "complete checkpoint", candidate.name, problems[0], more, REJECTED)
            self._reject(candidate, problems)
            rejected.append(f"{candidate.name}: {problems[0]}")
        else:
            raise CheckpointError(f"no usable checkpoint in {self.ckpt_dir} ({'; '.join(rejected)}); to start the run "
                                  f"over use resume=none (metrics.jsonl is then rewritten) or another run_dir")
        path = candidate
        marker = read_marker(path)
        try:
            load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                       load_lr_scheduler_states=True)
        except CheckpointError:
            raise
        except Exception as e:  # DeepSpeed's own checks (e.g. another world size); name the checkpoint
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {path}: {_first_line(e)}") from e
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the checkpoint {path} (no model states file)")
        state = TrainState(**client["trainer_state"])
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file() and marker.get("world_size") == self.world_size:
            try:
                set_rng_state(safe_torch_load(rng, extra_globals=_legacy_rng_globals()))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise CheckpointError(f"{rng}: not an RNG state file ({_first_line(e)})") from None
        else:
            logger.warning("resume: no RNG state for rank %d at world size %d; reseeding", self.rank, self.world_size)
            seed_everything(int(seed) + 1000 * state.step + self.rank)
        if rejected and self.rank == 0:
            atomic_write_text(self.ckpt_dir / LATEST, path.name)
        return state, path

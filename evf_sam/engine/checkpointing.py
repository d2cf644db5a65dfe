"""Crash-safe DeepSpeed checkpoints of a run: tags, the ``complete`` marker, ``latest``, per-rank RNG
state, pruning and resume.

    ckpt = Checkpointer(run_dir / "checkpoints", rank=r, world_size=w, keep_last=2)
    ckpt.save(engine, state)                       # checkpoints/step_00001000/ (+ latest), all ranks
    resumed = ckpt.resume(engine, "auto", seed=42)  # (TrainState, tag dir) or None: start from step 0

Layout of one tag directory ``checkpoints/step_{step:08d}/``: DeepSpeed's files (model states, one
optimizer shard per rank), ``rng_rank{r}.pt`` (every RNG of rank r), ``trainer_state.json`` and, written
last, ``complete`` (``{"step", "world_size"}``). ``checkpoints/latest`` names the newest complete tag and
is replaced atomically after it. A tag without ``complete`` is an interrupted save: never resumed from,
deleted when the same step is saved again.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from evf_sam.atomic import atomic_write_text
from evf_sam.engine import distributed as D
from evf_sam.engine.state import TrainState, rng_state, seed_everything, set_rng_state

__all__ = ["COMPLETE", "Checkpointer", "checkpoint_tag", "find_latest_checkpoint"]

logger = logging.getLogger(__name__)

COMPLETE = "complete"
LATEST = "latest"


def checkpoint_tag(step: int) -> str:
    return f"step_{int(step):08d}"


def find_latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """Newest tag dir under ``ckpt_dir`` that has the ``complete`` marker (None if none)."""
    if not ckpt_dir.is_dir():
        return None
    tags = []
    for d in ckpt_dir.iterdir():
        if d.is_dir() and d.name.startswith("step_") and (d / COMPLETE).is_file():
            try:
                tags.append((int(d.name[5:]), d))
            except ValueError:
                continue
    return max(tags)[1] if tags else None


class Checkpointer:
    """Saves and restores the DeepSpeed engine + `TrainState` + RNG under ``ckpt_dir`` (every rank calls)."""

    def __init__(self, ckpt_dir: Path, *, rank: int, world_size: int, keep_last: int):
        self.ckpt_dir = Path(ckpt_dir)
        self.rank, self.world_size = int(rank), int(world_size)
        self.keep_last = int(keep_last)  # complete checkpoints kept; 0: all

    def save(self, engine, state: TrainState) -> Path:
        tag = checkpoint_tag(state.step)
        d = self.ckpt_dir / tag
        if self.rank == 0 and d.exists():  # a stale, incomplete attempt at the same step
            shutil.rmtree(d)
        D.barrier()
        engine.save_checkpoint(str(self.ckpt_dir), tag=tag, client_state={"trainer_state": asdict(state)},
                               save_latest=False)
        torch.save(rng_state(), d / f"rng_rank{self.rank}.pt")
        D.barrier()
        if self.rank == 0:
            atomic_write_text(d / "trainer_state.json", json.dumps(asdict(state), indent=1))
            atomic_write_text(d / COMPLETE, json.dumps({"step": state.step, "world_size": self.world_size}))
            atomic_write_text(self.ckpt_dir / LATEST, tag)
            self.prune()
        D.barrier()
        logger.info("checkpoint %s written", d)
        return d

    def prune(self) -> None:
        """Deletes all but the newest ``keep_last`` complete checkpoints."""
        if self.keep_last <= 0:
            return
        done = sorted(p for p in self.ckpt_dir.glob("step_*") if (p / COMPLETE).is_file())
        for p in done[:-self.keep_last]:
            shutil.rmtree(p, ignore_errors=True)

    def resume(self, engine, resume: str | None, *, seed: int) -> tuple[TrainState, Path] | None:
        """Loads model, optimizer, LR schedule, `TrainState` and this rank's RNG.

        resume: "auto" (newest complete tag; None when there is none), "none" / None (None), or a tag dir.
        Without an RNG file for this rank at this world size the RNGs are reseeded from
        ``(seed, step, rank)``.
        """
        if resume is None or str(resume) in ("none", "None", "false", "False"):
            return None
        resume = str(resume)
        path = find_latest_checkpoint(self.ckpt_dir) if resume == "auto" else Path(resume)
        path = D.broadcast_object(str(path) if path else None)
        if path is None:
            logger.info("resume=auto: no complete checkpoint in %s; starting from step 0", self.ckpt_dir)
            return None
        path = Path(path)
        if not (path / COMPLETE).is_file():
            raise FileNotFoundError(f"resume={resume!r}: {path} is not a complete checkpoint (no '{COMPLETE}' marker)")
        marker = json.loads((path / COMPLETE).read_text())
        load_path, client = engine.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        state = TrainState(**client["trainer_state"])
        rng = path / f"rng_rank{self.rank}.pt"
        if rng.is_file() and marker.get("world_size") == self.world_size:
            set_rng_state(torch.load(rng, weights_only=False))
        else:
            logger.warning("resume: no RNG state for rank %d at world size %d; reseeding", self.rank, self.world_size)
            seed_everything(int(seed) + 1000 * state.step + self.rank)
        return state, path

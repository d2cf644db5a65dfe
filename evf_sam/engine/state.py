"""What a checkpoint carries besides the weights: the trainer's counters and every RNG state.

    state = TrainState()                       # step, samples, best metric, ...
    seed_everything(42)                        # python, numpy and torch from one seed
    torch.save(rng_state(), path)              # per rank; resume: set_rng_state(torch.load(path))

Shared by the trainer, checkpointing and the builders, and importing none of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["TrainState", "rng_state", "seed_everything", "set_rng_state"]


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    samples: int = 0  # training images seen (all ranks)
    expressions: int = 0  # referring expressions seen (all ranks)
    skipped_steps: int = 0
    nonfinite_in_row: int = 0
    best_metric: float = -1.0
    best_step: int = -1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's python / numpy / torch (and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

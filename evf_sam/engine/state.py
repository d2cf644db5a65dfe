"""What a checkpoint carries besides the weights: the trainer's counters and every RNG state.

    state = TrainState()                       # step, samples, best metric, ...
    seed_everything(42)                        # python, numpy and torch from one seed
    torch.save(rng_state(), path)              # per rank; resume: set_rng_state(torch.load(path, weights_only=True))

`rng_state` holds tensors, ints, floats, strings and plain containers only, so the file loads with
``torch.load(weights_only=True)``: a checkpoint never needs an unpickler that can run code.

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
    elapsed_s: float = 0.0  # training wall-clock seconds over all the run's processes (metrics.jsonl)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's python / numpy / torch (and CUDA) RNG states, as ``weights_only``-loadable values.

    python: ``random.getstate()`` (a tuple of ints); numpy: the legacy ``MT19937`` state as
    ``{"name", "key": (624,) int64 tensor, "pos", "has_gauss", "cached_gaussian"}``; torch / cuda:
    ByteTensors.
    """
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores `rng_state`'s output (also the pre-tensor layout, numpy's tuple with an ndarray key)."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        key = numpy["key"].numpy() if isinstance(numpy["key"], torch.Tensor) else np.asarray(numpy["key"])
        numpy = (numpy["name"], key.astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"])
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

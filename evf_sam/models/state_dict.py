"""Reading a state dict from a checkpoint file or object (shared by the BEiT-3 and SAM loaders)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = ["read_state_dict"]


def read_state_dict(src: Mapping[str, Any] | str | Path, *, wrappers: tuple[str, ...], what: str,
                    expected: str) -> Mapping[str, Tensor]:
    """The state dict in ``src``: a path (loaded with ``torch.load(weights_only=True)``, so a file
    holding arbitrary objects is refused) or an object; one level of wrapper (e.g. ``"model"``) is
    unwrapped. ``what`` / ``expected`` name the checkpoint and its format in error messages.
    """
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise FileNotFoundError(f"{what} not found: {str(path)!r} (expected {expected})")
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    else:
        obj = src
    for wrapper in wrappers:
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise TypeError(f"{what}: expected a state dict, got {type(obj).__name__}")
    return obj

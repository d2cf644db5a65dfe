"""Reading a state dict from a checkpoint file or object (shared by the BEiT-3 and SAM loaders), and
the strict load of a SAM-family weight file (SAM, EfficientSAM, SAM-2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = ["load_weights_strict", "read_state_dict"]


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


def load_weights_strict(module: torch.nn.Module, src: Mapping[str, Any] | str | Path, *, what: str, expected: str,
                        skip: tuple[str, ...] = (), assign: bool = False) -> None:
    """`read_state_dict` (``{"model": ...}`` / ``{"state_dict": ...}`` unwrapped), minus the ``skip`` keys
    (constants some exports carry), then `load_state_dict_strict`: missing, unexpected and mis-shaped
    tensors raise `StateDictMismatchError` naming each, and nothing is copied then."""
    from evf_sam.models.checkpoint import load_state_dict_strict

    obj = read_state_dict(src, wrappers=("model", "state_dict"), what=what, expected=expected)
    load_state_dict_strict(module, {k: v for k, v in obj.items() if k not in skip}, what=what, assign=assign)

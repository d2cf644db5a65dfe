"""State dicts: strict loading with a report (every missing, unexpected and mis-shaped tensor named),
reading one from a checkpoint file or object, and the strict load of a SAM-family weight file
(SAM, EfficientSAM, SAM-2). Shared by every loader in models/ (BEiT-3, SAM backends, checkpoint.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["CheckpointFileError", "StateDictMismatchError", "check_state_dict", "load_safetensors_file",
           "load_state_dict_strict", "load_torch_file", "load_weights_strict", "read_state_dict"]


class CheckpointFileError(ValueError):
    """A weight or config file that cannot be used: truncated, not the format its name says, a
    pickle holding more than tensors, a config.json that is not a usable object. One line naming
    ``path``, what is wrong and ``fix`` (what to do)."""

    def __init__(self, path: str | Path, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = str(path), problem, fix
        super().__init__(f"{self.path!r}: {problem}; {fix}")


_REDOWNLOAD = "re-download or re-export it (compare its size / checksum with the source)"


def _first_line(e: BaseException, limit: int = 160) -> str:
    line = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
    return line[:limit] + ("..." if len(line) > limit else "")


def load_safetensors_file(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a ``.safetensors`` file on CPU; `CheckpointFileError` naming the file when it
    is truncated or not a safetensors file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except OSError:
        raise
    except Exception as e:  # safetensors' SafetensorError (header too small / too large / incomplete)
        raise CheckpointFileError(path, f"not a readable safetensors file, truncated or corrupt "
                                        f"({_first_line(e)})", _REDOWNLOAD) from e


def load_torch_file(path: str | Path, *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU (memory-mapped with ``mmap`` when the file
    allows it). A pickle that holds anything but tensors and plain containers is refused without
    running it (`CheckpointFileError`: such a pickle could run code when loaded); so is a truncated
    or garbage file, with the file named."""
    import pickle

    try:
        if mmap:
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):  # legacy (pre-zipfile) pickles cannot be memory-mapped
                    raise
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise CheckpointFileError(
                path, "refused: this pickle holds objects other than tensors, which could run code when "
                      "loaded, so it was not loaded (torch.load weights_only=True)",
                "use a safetensors file, or, only if you trust its source, re-save just the state dict "
                "(torch.save(model.state_dict(), ...)) and load that") from None
        raise CheckpointFileError(path, f"not a readable PyTorch file, truncated or corrupt ({_first_line(e)})",
                                  _REDOWNLOAD) from e
    except OSError:  # missing file, permissions: the caller's message is better
        raise
    except Exception as e:  # truncated zip, garbage bytes (KeyError, EOFError, ...), empty file
        raise CheckpointFileError(path, f"not a readable PyTorch file, truncated or corrupt ({_first_line(e)})",
                                  _REDOWNLOAD) from e


class StateDictMismatchError(RuntimeError):
    """A state dict that does not match the model; ``missing``, ``unexpected``, ``mismatched`` name them.

    ``mismatched`` holds ``(name, shape in the file, shape in the model)``.
    """

    def __init__(self, what: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]) -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        lines = [f"{what} does not match the model:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): {short_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected tensors ({len(unexpected)}): {short_list(unexpected)}")
        for name, got, want in mismatched[:50]:
            lines.append(f"  shape mismatch {name}: file has {got}, model expects {want}")
        if len(mismatched) > 50:
            lines.append(f"  ... and {len(mismatched) - 50} more shape mismatches")
        super().__init__("\n".join(lines))


def short_list(names: list[str], limit: int = 50) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def check_state_dict(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], *, what: str,
                     display: Callable[[str], str] | None = None, extra_unexpected: Iterable[str] = ()) -> None:
    """Raises `StateDictMismatchError` unless ``state`` has exactly ``expected``'s names and shapes.

    ``display`` maps our names to the names the user sees in their file (e.g. `to_official_name`).
    """
    show = display or (lambda n: n)
    missing = sorted(show(k) for k in expected if k not in state)
    unexpected = sorted([show(k) for k in state if k not in expected] + list(extra_unexpected))
    mismatched = [(show(k), tuple(state[k].shape), tuple(expected[k].shape))
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(what, missing, unexpected, mismatched)


def load_state_dict_strict(module: nn.Module, state: Mapping[str, Tensor], *, what: str,
                           display: Callable[[str], str] | None = None, assign: bool = False) -> None:
    """Checks names and shapes (`check_state_dict`), then loads; nothing is copied on error.

    ``assign=False`` copies into the existing tensors (casting to their dtype); ``assign=True``
    adopts the given tensors (for modules built on the ``meta`` device).
    """
    check_state_dict(module.state_dict(), state, what=what, display=display)
    module.load_state_dict(state, strict=True, assign=assign)


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
        obj = load_safetensors_file(path) if path.suffix == ".safetensors" else load_torch_file(path)
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
    obj = read_state_dict(src, wrappers=("model", "state_dict"), what=what, expected=expected)
    load_state_dict_strict(module, {k: v for k, v in obj.items() if k not in skip}, what=what, assign=assign)

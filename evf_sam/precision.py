"""The one table from a precision name (CLI flags, ``precision=`` in the configs) to a torch dtype.

Names, not dtypes, so that importing it (the CLI's argument parser does) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # name -> torch attribute


def dtype_of(precision: str) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` -> the torch dtype; anything else is a ValueError naming the choices."""
    import torch

    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return getattr(torch, PRECISIONS[precision])

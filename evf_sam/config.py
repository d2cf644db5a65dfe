"""The Hydra training configuration (configs/train.yaml) as seen from Python.

    resolved(cfg.model)          # plain dict with every interpolation resolved ({} for None)
"""

from __future__ import annotations

from typing import Any

__all__ = ["resolved"]


def resolved(node: Any) -> dict:
    """A config node as a plain container, interpolations resolved (``{}`` for None)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if node is not None else {}

"""Projector: the encoder's fused feature -> one sparse SAM prompt embedding (paper Fig. 4).

Official EVF-SAM names this ``text_hidden_fcs.0`` (an ``nn.Sequential(Linear, ReLU, Linear)``);
``models/checkpoint.py`` maps ``text_hidden_fcs.0.0`` <-> ``fc1`` and ``text_hidden_fcs.0.2`` <-> ``fc2``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Projector(nn.Module):
    """Linear(in_dim, in_dim) -> ReLU -> Linear(in_dim, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.fc1 = nn.Linear(self.in_dim, self.in_dim)
        self.fc2 = nn.Linear(self.in_dim, self.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.fc2(F.relu(self.fc1(x)))

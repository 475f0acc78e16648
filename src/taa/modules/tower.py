"""A task tower: an MLP over a task feature, ending in one logit."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taa.modules.mlp import MLP


class Tower(nn.Module):
    """Maps a task feature ``[B, D]`` to the task's logit ``[B]``.

    Args:
        input_dim: width ``D`` of the task feature.
        hidden: hidden sizes of the tower's MLP (may be empty).
        dropout: dropout after each hidden layer.

    Example:
        >>> tower = Tower(8, (4,), dropout=0.0)
        >>> tower(torch.randn(5, 8)).shape
        torch.Size([5])
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.body = MLP(input_dim, hidden, dropout)
        self.head = nn.Linear(self.body.output_dim, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The logit ``[B]`` for features ``[B, D]``, always float32.

        Under bf16 autocast the body runs in bf16 but the head (one dot product per row)
        runs in float32: a bf16 logit carries 8 significant bits, so the probabilities of
        a rare-positive task (CTR ~2 %) would collapse onto a few hundred values and the
        ties would move the AUC.
        """
        hidden = self.body(features)
        if torch.is_autocast_enabled(hidden.device.type):
            with torch.autocast(hidden.device.type, enabled=False):
                return self.head(hidden.float()).squeeze(-1)
        return self.head(hidden).squeeze(-1)

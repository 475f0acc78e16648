"""The fully connected block used by experts, bottoms and towers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taa.errors import ConfigError


class MLP(nn.Module):
    """Stacked ``Linear -> BatchNorm1d -> ReLU -> Dropout`` layers, one per hidden size.

    The ``Linear`` layers have no bias: the BatchNorm right after subtracts the batch mean,
    so a bias there has a true gradient of zero, and Adam would turn the rounding noise of
    that gradient into random steps. BatchNorm's own shift plays the bias's role.

    With no hidden sizes it is the identity, so an empty tower feeds its head directly.
    BatchNorm needs at least two rows per batch in training mode; evaluation takes any.

    Args:
        input_dim: width of the input.
        hidden: width of each layer; the last is :attr:`output_dim`.
        dropout: drop probability after each layer (0 leaves the dropout out).

    Example:
        >>> mlp = MLP(6, (4, 3), dropout=0.0)
        >>> mlp(torch.randn(5, 6)).shape
        torch.Size([5, 3])
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if input_dim < 1 or any(size < 1 for size in hidden):
            raise ConfigError(
                f"MLP sizes must be positive, got input {input_dim} and hidden {tuple(hidden)}"
            )
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map ``[B, input_dim]`` to ``[B, output_dim]``."""
        return self.layers(inputs)

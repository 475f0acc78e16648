"""Groups of expert MLPs and the softmax gates that mix them (OMoE, MMoE, PLE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taa.errors import ConfigError
from taa.modules.mlp import MLP


class ExpertGroup(nn.Module):
    """``K`` independent expert MLPs over the same input.

    Args:
        input_dim: width of the input.
        num_experts: number of experts ``K``.
        hidden: hidden sizes of each expert; the last is the output width ``D``.
        dropout: dropout after each expert layer.

    Example:
        >>> group = ExpertGroup(6, num_experts=3, hidden=(4,), dropout=0.0)
        >>> group(torch.randn(5, 6)).shape
        torch.Size([5, 3, 4])
    """

    def __init__(
        self, input_dim: int, num_experts: int, hidden: Sequence[int], dropout: float
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ConfigError(f"an expert group needs at least 1 expert, got {num_experts}")
        self.experts = nn.ModuleList(MLP(input_dim, hidden, dropout) for _ in range(num_experts))
        self.output_dim = self.experts[0].output_dim

    def __len__(self) -> int:
        return len(self.experts)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Run every expert on ``[B, input_dim]``; returns ``[B, K, D]``."""
        return torch.stack([expert(inputs) for expert in self.experts], dim=1)


class Gate(nn.Module):
    """A softmax over experts computed from the gate's input: ``softmax(W x)``.

    As in the MMoE and PLE papers the gate is one linear map without bias.

    Args:
        input_dim: width of the gate's input.
        num_experts: number of experts ``K`` the gate weighs.

    Example:
        >>> gate = Gate(6, num_experts=3)
        >>> weights = gate(torch.randn(5, 6))
        >>> weights.shape, bool(torch.allclose(weights.sum(dim=1), torch.ones(5)))
        (torch.Size([5, 3]), True)
    """

    def __init__(self, input_dim: int, num_experts: int) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, num_experts, bias=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Expert weights ``[B, K]`` for inputs ``[B, input_dim]``; each row sums to 1."""
        return torch.softmax(self.linear(inputs), dim=-1)


def mix_experts(expert_outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted sum of expert outputs ``[B, K, D]`` by gate weights ``[B, K]``; ``[B, D]``.

    Example:
        >>> outputs = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
        >>> mix_experts(outputs, torch.tensor([[0.25, 0.75]]))
        tensor([[0.2500, 1.5000]])
    """
    return (expert_outputs * weights.unsqueeze(-1)).sum(dim=1)

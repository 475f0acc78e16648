"""Progressive Layered Extraction (PLE; Tang et al., RecSys 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.models.base import ModelConfig, ModelOutput, MultiTaskModel, register_model
from taa.modules.embedding import FeatureEmbedding
from taa.modules.experts import ExpertGroup, Gate, mix_experts
from taa.modules.tower import Tower


class ExtractionLevel(nn.Module):
    """One PLE level: task-specific and shared experts with customized gate control.

    Task ``t``'s gate weighs its own ``task_experts`` experts and the ``shared_experts``
    shared ones, reading task ``t``'s input. At every level but the last a shared gate
    weighs all ``T * task_experts + shared_experts`` experts, reading the shared input,
    and its mixture is the shared input of the next level.

    Args:
        input_dim: width of this level's inputs.
        num_tasks: number of tasks ``T``.
        task_experts: experts per task.
        shared_experts: shared experts.
        hidden: hidden sizes of every expert; the last is the output width ``D``.
        dropout: dropout after each expert layer.
        shared_gate: whether this level mixes a shared output for a next level.
    """

    def __init__(
        self,
        input_dim: int,
        num_tasks: int,
        task_experts: int,
        shared_experts: int,
        hidden: Sequence[int],
        dropout: float,
        shared_gate: bool,
    ) -> None:
        super().__init__()
        self.task_experts = nn.ModuleList(
            ExpertGroup(input_dim, task_experts, hidden, dropout) for _ in range(num_tasks)
        )
        self.shared_experts = ExpertGroup(input_dim, shared_experts, hidden, dropout)
        self.task_gates = nn.ModuleList(
            Gate(input_dim, task_experts + shared_experts) for _ in range(num_tasks)
        )
        total = num_tasks * task_experts + shared_experts
        self.shared_gate = Gate(input_dim, total) if shared_gate else None

    def forward(
        self, task_inputs: Sequence[torch.Tensor], shared_input: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]:
        """Mix one level.

        Args:
            task_inputs: one ``[B, input_dim]`` input per task.
            shared_input: the shared input ``[B, input_dim]``.

        Returns:
            The task outputs ``T x [B, D]``, the shared output ``[B, D]`` (``None`` at the
            last level) and the task gates' weights ``[B, T, task_experts + shared_experts]``.
        """
        shared_outputs = self.shared_experts(shared_input)
        task_outputs = [
            group(inputs) for group, inputs in zip(self.task_experts, task_inputs, strict=True)
        ]
        mixed, weights = [], []
        for gate, own, inputs in zip(self.task_gates, task_outputs, task_inputs, strict=True):
            weight = gate(inputs)
            mixed.append(mix_experts(torch.cat([own, shared_outputs], dim=1), weight))
            weights.append(weight)
        shared_mixed = None
        if self.shared_gate is not None:
            everything = torch.cat([*task_outputs, shared_outputs], dim=1)
            shared_mixed = mix_experts(everything, self.shared_gate(shared_input))
        return mixed, shared_mixed, torch.stack(weights, dim=1)


@register_model("ple")
class PLEModel(MultiTaskModel):
    """``ple_levels`` stacked extraction levels, then one tower per task.

    Every expert of every level is an MLP with the ``expert_hidden`` sizes; the first
    level reads the embeddings, later levels read the previous level's outputs (width
    ``D``). Task ``t``'s feature is its gate's mixture at the last level. ``num_experts``
    is not used by PLE (see ``ple_task_experts`` and ``ple_shared_experts``).

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("a", "b", "c"))
        >>> config = ModelConfig(
        ...     embedding_dim=4, expert_hidden=(6,), ple_task_experts=2, ple_shared_experts=1
        ... )
        >>> output = PLEModel(spec, config).eval()(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> output.logits.shape, output.extras["gate_weights"].shape
        (torch.Size([1, 3]), torch.Size([1, 3, 3]))
    """

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        self.levels = nn.ModuleList(
            ExtractionLevel(
                self.embedding.output_dim if level == 0 else config.feature_dim,
                self.num_tasks,
                config.ple_task_experts,
                config.ple_shared_experts,
                config.expert_hidden,
                config.dropout,
                shared_gate=level < config.ple_levels - 1,
            )
            for level in range(config.ple_levels)
        )
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout)
            for _ in range(self.num_tasks)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """Per-task logits and probabilities ``[B, T]``; features ``T x [B, D]``.

        ``extras["gate_weights"]`` holds the last level's task gate weights
        ``[B, T, ple_task_experts + ple_shared_experts]``.
        """
        inputs = self.embedding(categorical, numerical)
        task_inputs: list[torch.Tensor] = [inputs] * self.num_tasks
        shared = inputs
        weights = inputs.new_zeros(())
        for level in self.levels:
            task_inputs, next_shared, weights = level(task_inputs, shared)
            if next_shared is not None:
                shared = next_shared
        logits = [tower(feature) for tower, feature in zip(self.towers, task_inputs, strict=True)]
        return self._make_output(logits, task_inputs, gate_weights=weights)

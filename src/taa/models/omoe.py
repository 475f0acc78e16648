"""One-gate mixture of experts (OMoE), the baseline of the MMoE paper (Ma et al., KDD 2018)."""

from __future__ import annotations

import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.models.base import ModelConfig, ModelOutput, MultiTaskModel, register_model
from taa.modules.embedding import FeatureEmbedding
from taa.modules.experts import ExpertGroup, Gate, mix_experts
from taa.modules.tower import Tower


@register_model("omoe")
class OMoEModel(MultiTaskModel):
    """``num_experts`` expert MLPs mixed by one gate shared by all tasks.

    Since the gate is shared, the mixed feature is the same tensor for every task.

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("click", "conversion"))
        >>> config = ModelConfig(embedding_dim=4, expert_hidden=(6,), num_experts=3)
        >>> output = OMoEModel(spec, config).eval()(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> output.features[0].shape, output.features[0] is output.features[1]
        (torch.Size([1, 6]), True)
    """

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        width = self.embedding.output_dim
        self.experts = ExpertGroup(width, config.num_experts, config.expert_hidden, config.dropout)
        self.gate = Gate(width, config.num_experts)
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout)
            for _ in range(self.num_tasks)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """Per-task logits and probabilities ``[B, T]``; features ``T x [B, D]`` (identical).

        ``extras["gate_weights"]`` holds the shared gate's weights ``[B, K]``.
        """
        inputs = self.embedding(categorical, numerical)
        weights = self.gate(inputs)
        mixed = mix_experts(self.experts(inputs), weights)
        logits = [tower(mixed) for tower in self.towers]
        return self._make_output(logits, [mixed] * self.num_tasks, gate_weights=weights)

"""Multi-gate mixture of experts (MMoE; Ma et al., KDD 2018)."""

from __future__ import annotations

import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.models.base import ModelConfig, ModelOutput, MultiTaskModel, register_model
from taa.modules.embedding import FeatureEmbedding
from taa.modules.experts import ExpertGroup, Gate, mix_experts
from taa.modules.tower import Tower


@register_model("mmoe")
class MMoEModel(MultiTaskModel):
    """``num_experts`` shared expert MLPs; each task mixes them with its own softmax gate.

    Task ``t``'s feature is its gate's mixture of the expert outputs, ``[B, D]``.

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("click", "conversion"))
        >>> config = ModelConfig(embedding_dim=4, expert_hidden=(6,), num_experts=3)
        >>> output = MMoEModel(spec, config).eval()(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> output.logits.shape, output.extras["gate_weights"].shape
        (torch.Size([1, 2]), torch.Size([1, 2, 3]))
    """

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        width = self.embedding.output_dim
        self.experts = ExpertGroup(width, config.num_experts, config.expert_hidden, config.dropout)
        self.gates = nn.ModuleList(Gate(width, config.num_experts) for _ in range(self.num_tasks))
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout)
            for _ in range(self.num_tasks)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """Per-task logits and probabilities ``[B, T]``; features ``T x [B, D]``.

        ``extras["gate_weights"]`` holds every task's gate weights ``[B, T, K]``.
        """
        inputs = self.embedding(categorical, numerical)
        expert_outputs = self.experts(inputs)
        weights = [gate(inputs) for gate in self.gates]
        features = [mix_experts(expert_outputs, weight) for weight in weights]
        logits = [tower(feature) for tower, feature in zip(self.towers, features, strict=True)]
        return self._make_output(logits, features, gate_weights=torch.stack(weights, dim=1))

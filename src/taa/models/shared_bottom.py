"""Shared-bottom multi-task model (Caruana, 1997): one hidden network, one tower per task."""

from __future__ import annotations

import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.models.base import ModelConfig, ModelOutput, MultiTaskModel, register_model
from taa.modules.embedding import FeatureEmbedding
from taa.modules.mlp import MLP
from taa.modules.tower import Tower


@register_model("shared-bottom")
class SharedBottomModel(MultiTaskModel):
    """All tasks read the output of one bottom MLP (``expert_hidden``).

    The features are therefore the same tensor for every task: a critic aligning task
    ``t``'s feature moves the representation of all tasks at once.

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("a", "b", "c"))
        >>> config = ModelConfig(embedding_dim=4, expert_hidden=(8, 6), tower_hidden=(4,))
        >>> model = SharedBottomModel(spec, config).eval()
        >>> output = model(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> output.logits.shape, output.features[0] is output.features[2]
        (torch.Size([1, 3]), True)
    """

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        self.bottom = MLP(self.embedding.output_dim, config.expert_hidden, config.dropout)
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout)
            for _ in range(self.num_tasks)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """Per-task logits and probabilities ``[B, T]``; features ``T x [B, D]`` (identical)."""
        shared = self.bottom(self.embedding(categorical, numerical))
        logits = [tower(shared) for tower in self.towers]
        return self._make_output(logits, [shared] * self.num_tasks)

"""Single-task baseline: one separate network per task on a shared input layer."""

from __future__ import annotations

import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.models.base import ModelConfig, ModelOutput, MultiTaskModel, register_model
from taa.modules.embedding import FeatureEmbedding
from taa.modules.mlp import MLP
from taa.modules.tower import Tower


@register_model("single-task")
class SingleTaskModel(MultiTaskModel):
    """Each task has its own bottom MLP and tower; only the embedding layer is shared.

    This is the usual "single-task" baseline of multi-task ranking papers: the tasks share
    no hidden layer, so they cannot help (or hurt) each other above the embeddings.
    Task ``t``'s feature is the output of its own bottom MLP (``expert_hidden``).

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("click", "conversion"))
        >>> config = ModelConfig(embedding_dim=4, expert_hidden=(8, 6), tower_hidden=(4,))
        >>> model = SingleTaskModel(spec, config).eval()
        >>> output = model(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> output.probabilities.shape, output.features[1].shape
        (torch.Size([1, 2]), torch.Size([1, 6]))
    """

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        width = self.embedding.output_dim
        self.bottoms = nn.ModuleList(
            MLP(width, config.expert_hidden, config.dropout) for _ in range(self.num_tasks)
        )
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout)
            for _ in range(self.num_tasks)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """Per-task logits and probabilities ``[B, T]``; features ``T x [B, D]``."""
        inputs = self.embedding(categorical, numerical)
        features = [bottom(inputs) for bottom in self.bottoms]
        logits = [tower(feature) for tower, feature in zip(self.towers, features, strict=True)]
        return self._make_output(logits, features)

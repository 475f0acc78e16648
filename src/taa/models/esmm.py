"""Entire Space Multi-task Model (ESMM; Ma et al., SIGIR 2018)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from taa.data.schema import InputSpec
from taa.models.base import (
    PROBABILITY_EPSILON,
    ModelConfig,
    ModelOutput,
    MultiTaskModel,
    register_model,
)
from taa.modules.embedding import FeatureEmbedding
from taa.modules.mlp import MLP
from taa.modules.tower import Tower


@register_model("esmm")
class ESMMModel(MultiTaskModel):
    """A CTR network and a CVR network on shared embeddings; ``pCTCVR = pCTR * pCVR``.

    Each network has its own bottom MLP (``expert_hidden``, no shared bottom) and tower.
    The model is trained on the click and click-and-conversion labels over all
    impressions, so the CVR network is learned without the sample selection bias of
    training on clicked rows only. Task 0 is CTR and task 1 is CTCVR; the task features
    are the CTR and the CVR network's bottom outputs. ``logits[:, 1]`` is the inverse
    sigmoid of ``pCTCVR`` clamped to ``[1e-7, 1 - 1e-7]``; ``extras`` holds
    ``cvr_logits`` and ``cvr_probabilities`` ``[B]``.

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("click", "conversion"))
        >>> config = ModelConfig(embedding_dim=4, expert_hidden=(6,), tower_hidden=(4,))
        >>> output = ESMMModel(spec, config).eval()(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> bool(output.probabilities[0, 1] <= output.probabilities[0, 0])
        True
    """

    requires_click_conversion = True

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        width = self.embedding.output_dim
        self.bottoms = nn.ModuleList(
            MLP(width, config.expert_hidden, config.dropout) for _ in range(2)
        )
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout) for _ in range(2)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """CTR and CTCVR logits and probabilities ``[B, 2]``; features ``2 x [B, D]``."""
        inputs = self.embedding(categorical, numerical)
        features = [bottom(inputs) for bottom in self.bottoms]
        ctr_logits, cvr_logits = (
            tower(feature) for tower, feature in zip(self.towers, features, strict=True)
        )
        return self.combine(ctr_logits, cvr_logits, features)

    @staticmethod
    def combine(
        ctr_logits: torch.Tensor, cvr_logits: torch.Tensor, features: list[torch.Tensor]
    ) -> ModelOutput:
        """The output for CTR and CVR logits ``[B]``: ``pCTCVR = pCTR * pCVR``.

        Example:
            >>> logits = torch.tensor([0.0]), torch.log(torch.tensor([3.0]))
            >>> ESMMModel.combine(*logits, []).probabilities
            tensor([[0.5000, 0.3750]])
        """
        ctr = torch.sigmoid(ctr_logits)
        cvr = torch.sigmoid(cvr_logits)
        ctcvr = (ctr * cvr).clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
        ctcvr_logits = torch.log(ctcvr) - torch.log1p(-ctcvr)
        return ModelOutput(
            logits=torch.stack([ctr_logits, ctcvr_logits], dim=1),
            probabilities=torch.stack([ctr, ctr * cvr], dim=1),
            features=tuple(features),
            extras={"cvr_logits": cvr_logits, "cvr_probabilities": cvr},
        )

    def task_losses(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy per task ``[T]`` on probabilities clamped to ``[1e-7, 1-1e-7]``.

        The clamp keeps the loss finite when the product of two probabilities underflows.
        """
        probabilities = output.probabilities.clamp(PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
        return F.binary_cross_entropy(probabilities, labels, reduction="none").mean(dim=0)

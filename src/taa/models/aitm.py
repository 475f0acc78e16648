"""Adaptive Information Transfer Multi-task model (AITM; Xi et al., KDD 2021)."""

from __future__ import annotations

import math

import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.models.base import ModelConfig, ModelOutput, MultiTaskModel, register_model
from taa.modules.embedding import FeatureEmbedding
from taa.modules.mlp import MLP
from taa.modules.tower import Tower


class AdaptiveInformationTransfer(nn.Module):
    """The AIT module: fuses information sent by the click task into the conversion task.

    The click representation is sent through a learned transfer layer
    (``Linear -> ReLU``), giving ``p``. Over the two candidates ``u`` in ``{p, q}`` (``q``
    the conversion task's own representation) the module computes the attention weight
    ``softmax_u(<h2(u), h3(u)> / sqrt(D))`` and returns ``sum_u w_u * h1(u)``, where
    ``h1``, ``h2`` and ``h3`` are linear maps ``D -> D``.

    Args:
        dim: width ``D`` of both representations.

    Example:
        >>> ait = AdaptiveInformationTransfer(4)
        >>> fused, weights, sent = ait(torch.randn(3, 4), torch.randn(3, 4))
        >>> fused.shape, weights.shape, sent.shape
        (torch.Size([3, 4]), torch.Size([3, 2]), torch.Size([3, 4]))
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.transfer = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.values = nn.Linear(dim, dim)
        self.queries = nn.Linear(dim, dim)
        self.keys = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(
        self, previous: torch.Tensor, own: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fuse ``previous`` (click, ``[B, D]``) into ``own`` (conversion, ``[B, D]``).

        Returns:
            The fused representation ``[B, D]``, the attention weights ``[B, 2]``
            (transferred first, own second) and the transferred information ``[B, D]``.
        """
        transferred = self.transfer(previous)
        candidates = torch.stack([transferred, own], dim=1)
        scores = (self.queries(candidates) * self.keys(candidates)).sum(dim=-1) * self.scale
        weights = torch.softmax(scores, dim=1)
        fused = (self.values(candidates) * weights.unsqueeze(-1)).sum(dim=1)
        return fused, weights, transferred


@register_model("aitm")
class AITMModel(MultiTaskModel):
    """Click and conversion networks on shared embeddings, linked by an AIT module.

    Each task has its own bottom MLP (``expert_hidden``), AITM's "task tower", giving
    ``q_click`` and ``q_conversion``. The click feature is ``q_click``; the conversion
    feature is the AIT output that fuses the transferred ``q_click`` into
    ``q_conversion``. Each feature (the representation entering the task's prediction
    tower) then goes through a :class:`~taa.modules.tower.Tower`.

    :meth:`auxiliary_loss` is the label constraint
    ``aitm_constraint_weight * mean(max(p_conversion - p_click, 0))``: a conversion
    without a click is impossible, so the conversion probability should not exceed the
    click probability. ``extras`` holds ``attention_weights`` ``[B, 2]`` and
    ``transferred`` ``[B, D]``.

    Example:
        >>> spec = InputSpec(vocab_sizes=(4, 3), num_numerical=2, tasks=("click", "conversion"))
        >>> config = ModelConfig(embedding_dim=4, expert_hidden=(6,), tower_hidden=(4,))
        >>> output = AITMModel(spec, config).eval()(torch.tensor([[1, 2]]), torch.zeros(1, 2))
        >>> output.probabilities.shape, output.extras["attention_weights"].shape
        (torch.Size([1, 2]), torch.Size([1, 2]))
    """

    requires_click_conversion = True

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        self.embedding = FeatureEmbedding.from_spec(spec, config.embedding_dim)
        width = self.embedding.output_dim
        self.bottoms = nn.ModuleList(
            MLP(width, config.expert_hidden, config.dropout) for _ in range(2)
        )
        self.transfer = AdaptiveInformationTransfer(config.feature_dim)
        self.towers = nn.ModuleList(
            Tower(config.feature_dim, config.tower_hidden, config.dropout) for _ in range(2)
        )

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        """Click and conversion logits and probabilities ``[B, 2]``; features ``2 x [B, D]``."""
        inputs = self.embedding(categorical, numerical)
        click, own = (bottom(inputs) for bottom in self.bottoms)
        conversion, weights, transferred = self.transfer(click, own)
        features = [click, conversion]
        logits = [tower(feature) for tower, feature in zip(self.towers, features, strict=True)]
        return self._make_output(
            logits, features, attention_weights=weights, transferred=transferred
        )

    def auxiliary_loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """The weighted label-constraint loss, a scalar; zero when the weight is 0.

        ``labels`` is unused: the constraint compares the two predicted probabilities.
        """
        weight = self.config.aitm_constraint_weight
        if weight == 0:
            return output.probabilities.new_zeros(())
        click, conversion = output.probabilities.unbind(dim=1)
        return weight * torch.relu(conversion - click).mean()

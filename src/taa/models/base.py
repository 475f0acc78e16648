"""The interface every multi-task ranker implements, its config, and the model registry.

Every model maps categorical indices ``[B, F]`` and numerical features ``[B, N]`` to a
:class:`ModelOutput`: per-task logits and probabilities ``[B, T]`` and, per task, the
feature ``[B, D]`` that feeds that task's tower. Adaptation methods only use this
interface, so every method works with every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from taa.data.schema import InputSpec, Schema
from taa.errors import ConfigError

PROBABILITY_EPSILON = 1e-7


@dataclass
class ModelConfig:
    """Sizes of a multi-task ranker. Defaults are those of Su et al. (ACM MM 2023).

    Args:
        embedding_dim: width of each categorical field's embedding and of the projection
            of the numerical block (default 128).
        expert_hidden: hidden sizes of an expert or shared-bottom MLP; the last one is the
            task feature width D (default 512-256).
        tower_hidden: hidden sizes of each task tower (default 128-64).
        dropout: dropout after each hidden layer (default 0.2).
        num_experts: experts in OMoE and MMoE (default 8).
        ple_shared_experts: shared experts per PLE level (default 4).
        ple_task_experts: task-specific experts per task and PLE level (default 4).
        ple_levels: extraction levels of PLE (default 2).
        aitm_constraint_weight: weight of AITM's label-constraint loss; 0 turns it off.
    """

    embedding_dim: int = field(
        default=128,
        metadata={"help": "Width of each categorical embedding and of the numerical projection."},
    )
    expert_hidden: tuple[int, ...] = field(
        default=(512, 256),
        metadata={"help": "Hidden sizes of each expert or bottom MLP; the last is the width D."},
    )
    tower_hidden: tuple[int, ...] = field(
        default=(128, 64), metadata={"help": "Hidden sizes of each task tower."}
    )
    dropout: float = field(default=0.2, metadata={"help": "Dropout after each hidden layer."})
    num_experts: int = field(default=8, metadata={"help": "Experts in OMoE and MMoE."})
    ple_shared_experts: int = field(default=4, metadata={"help": "Shared experts per PLE level."})
    ple_task_experts: int = field(
        default=4, metadata={"help": "Task-specific experts per task and PLE level."}
    )
    ple_levels: int = field(default=2, metadata={"help": "Extraction levels of PLE."})
    aitm_constraint_weight: float = field(
        default=0.6, metadata={"help": "Weight of AITM's label-constraint loss (0 turns it off)."}
    )

    def __post_init__(self) -> None:
        self.expert_hidden = tuple(int(size) for size in self.expert_hidden)
        self.tower_hidden = tuple(int(size) for size in self.tower_hidden)
        positive = {
            "embedding_dim": self.embedding_dim,
            "num_experts": self.num_experts,
            "ple_shared_experts": self.ple_shared_experts,
            "ple_task_experts": self.ple_task_experts,
            "ple_levels": self.ple_levels,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"model option {name} must be at least 1, got {value}")
        if not self.expert_hidden or min(self.expert_hidden) < 1:
            raise ConfigError(
                f"model option expert_hidden needs at least one positive size, "
                f"got {self.expert_hidden}"
            )
        if min(self.tower_hidden, default=1) < 1:
            raise ConfigError(f"model option tower_hidden has a size below 1: {self.tower_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model option dropout must be in [0, 1), got {self.dropout}")
        if self.aitm_constraint_weight < 0:
            raise ConfigError(
                f"model option aitm_constraint_weight must be >= 0, got "
                f"{self.aitm_constraint_weight}"
            )

    @property
    def feature_dim(self) -> int:
        """Width D of the task features (the last expert/bottom layer)."""
        return self.expert_hidden[-1]

    def to_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model options {unknown}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class ModelOutput:
    """What a model returns for a batch.

    Attributes:
        logits: per-task logits ``[B, T]``; ``sigmoid(logits) == probabilities`` except
            where a model composes probabilities (ESMM's CTCVR), where the logit is the
            inverse sigmoid of the clamped probability.
        probabilities: per-task probabilities in ``[0, 1]``, ``[B, T]``.
        features: one ``[B, D]`` tensor per task, the input of that task's tower: what
            the adaptation critics align.
        extras: model-specific tensors some losses need (AITM's transferred information).
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    features: tuple[torch.Tensor, ...]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class MultiTaskModel(nn.Module):
    """Base class of all rankers. Subclasses implement :meth:`forward`.

    Subclasses that need an ordered click -> conversion pair of tasks set
    ``requires_click_conversion = True``; they are refused for other task lists.
    Subclasses keep their task towers in ``self.towers`` (an ``nn.ModuleList``), so
    :meth:`encoder_parameters` (below the features) and :meth:`tower_parameters` (above
    them) split the parameters the way feature-alignment methods need.
    """

    requires_click_conversion: bool = False

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__()
        if spec.num_tasks < 1:
            raise ConfigError("a model needs at least one task")
        if self.requires_click_conversion and spec.num_tasks != 2:
            raise ConfigError(
                f"{type(self).__name__} needs exactly two ordered tasks (click, then "
                f"conversion), got {list(spec.tasks)}; use mmoe, ple or shared-bottom for "
                "other task lists"
            )
        self.spec = spec
        self.config = config

    @property
    def num_tasks(self) -> int:
        return self.spec.num_tasks

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> ModelOutput:
        raise NotImplementedError

    def tower_parameters(self) -> list[nn.Parameter]:
        """Parameters of the task towers (``self.towers``): everything above the features."""
        towers = getattr(self, "towers", None)
        return list(towers.parameters()) if isinstance(towers, nn.Module) else []

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters below the task features: embeddings, experts, gates, bottoms."""
        above = {id(parameter) for parameter in self.tower_parameters()}
        return [parameter for parameter in self.parameters() if id(parameter) not in above]

    def _make_output(
        self,
        logits: list[torch.Tensor],
        features: list[torch.Tensor] | tuple[torch.Tensor, ...],
        **extras: torch.Tensor,
    ) -> ModelOutput:
        """Stack per-task logits ``T x [B]`` into a :class:`ModelOutput` (``[B, T]``)."""
        stacked = torch.stack(logits, dim=1)
        return ModelOutput(
            logits=stacked,
            probabilities=torch.sigmoid(stacked),
            features=tuple(features),
            extras=dict(extras),
        )

    def task_losses(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy per task, ``[T]``, computed from logits (never inf)."""
        return F.binary_cross_entropy_with_logits(output.logits, labels, reduction="none").mean(
            dim=0
        )

    def auxiliary_loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """A model's own extra loss (AITM's label constraint); zero by default."""
        return output.logits.new_zeros(())


ModelFactory = Callable[[InputSpec, ModelConfig], MultiTaskModel]
MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[type[MultiTaskModel]], type[MultiTaskModel]]:
    """Class decorator adding a model to the registry under ``name``."""

    def decorate(cls: type[MultiTaskModel]) -> type[MultiTaskModel]:
        if name in MODELS:
            raise ValueError(f"model name {name!r} is registered twice")
        MODELS[name] = cls
        return cls

    return decorate


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    import taa.models  # noqa: F401  (registers every model)

    return sorted(MODELS)


def build_model(
    name: str, spec: InputSpec | Schema, config: ModelConfig | None = None
) -> MultiTaskModel:
    """Build a registered model by name for a schema's inputs and tasks.

    Args:
        name: one of :func:`available_models` (``mmoe``, ``ple``, ``aitm``, ...).
        spec: the dataset schema, or just its :class:`InputSpec`.
        config: model sizes; the paper's defaults when omitted.
    """
    choices = available_models()
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {choices}")
    input_spec = spec.input_spec() if isinstance(spec, Schema) else spec
    return MODELS[name](input_spec, config or ModelConfig())

"""Multi-task rankers behind one interface (:class:`~taa.models.base.MultiTaskModel`)."""

from taa.models.base import (
    MODELS,
    ModelConfig,
    ModelOutput,
    MultiTaskModel,
    available_models,
    build_model,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelConfig",
    "ModelOutput",
    "MultiTaskModel",
    "available_models",
    "build_model",
    "register_model",
]

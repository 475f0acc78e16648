"""Multi-task rankers behind one interface (:class:`~taa.models.base.MultiTaskModel`).

Importing this package registers every model: ``single-task``, ``shared-bottom``,
``omoe``, ``mmoe``, ``ple``, ``aitm`` and ``esmm``.
"""

from taa.models.aitm import AITMModel
from taa.models.base import (
    MODELS,
    ModelConfig,
    ModelOutput,
    MultiTaskModel,
    available_models,
    build_model,
    register_model,
)
from taa.models.esmm import ESMMModel
from taa.models.flops import count_linear_flops
from taa.models.mmoe import MMoEModel
from taa.models.omoe import OMoEModel
from taa.models.ple import PLEModel
from taa.models.shared_bottom import SharedBottomModel
from taa.models.single_task import SingleTaskModel

__all__ = [
    "MODELS",
    "AITMModel",
    "ESMMModel",
    "MMoEModel",
    "ModelConfig",
    "ModelOutput",
    "MultiTaskModel",
    "OMoEModel",
    "PLEModel",
    "SharedBottomModel",
    "SingleTaskModel",
    "available_models",
    "build_model",
    "count_linear_flops",
    "register_model",
]

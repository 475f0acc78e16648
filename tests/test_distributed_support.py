"""A model for exact run-to-run comparisons (no tests here).

``mmoe-bias-free`` is MMoE whose Linear layers that feed a BatchNorm have no bias. Such a
bias has an exact gradient of zero (BatchNorm removes any constant shift), so its computed
gradient is rounding noise that Adam rescales into steps of about the learning rate in a
random direction; two runs that sum in different orders (two processes against one, a
stream against a loaded split) then end with different biases, which shift eval-mode
outputs through the BatchNorm running means. Without those biases such runs agree to
rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from taa.data.schema import InputSpec
from taa.models import MODELS, ModelConfig
from taa.models.mmoe import MMoEModel

BIAS_FREE = "mmoe-bias-free"


def drop_biases_before_batchnorm(module: nn.Module) -> None:
    """Remove the bias of every Linear layer directly followed by a BatchNorm1d."""
    for child in module.modules():
        if isinstance(child, nn.Sequential):
            for layer, following in zip(child, list(child)[1:], strict=False):
                if isinstance(layer, nn.Linear) and isinstance(following, nn.BatchNorm1d):
                    layer.register_parameter("bias", None)


class BiasFreeMMoE(MMoEModel):
    """MMoE whose Linear layers that feed a BatchNorm have no bias (it would be inert)."""

    def __init__(self, spec: InputSpec, config: ModelConfig) -> None:
        super().__init__(spec, config)
        drop_biases_before_batchnorm(self)


@contextlib.contextmanager
def bias_free_registered() -> Iterator[str]:
    """Register ``mmoe-bias-free`` for the duration of a block (other tests list the registry)."""
    added = BIAS_FREE not in MODELS
    if added:
        MODELS[BIAS_FREE] = BiasFreeMMoE
    try:
        yield BIAS_FREE
    finally:
        if added:
            MODELS.pop(BIAS_FREE, None)

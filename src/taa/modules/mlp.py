"""The fully connected block used by experts, bottoms and towers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taa.errors import ConfigError


class _MaskedDropout(torch.autograd.Function):
    """Dropout with a mask drawn as 15-bit random integers (CPU).

    ``torch.nn.functional.dropout`` draws its mask with ``bernoulli_``, which on a 2-core
    AMD EPYC barely uses the second thread and took 10 % of an fp32 TAA step and 18 % of
    a bf16 one. Drawing ``int16`` integers is 3-4x cheaper, and the forward and backward
    passes then cost one ``where`` and one in-place multiply each.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, inputs: torch.Tensor, threshold: int, scale: float
    ) -> torch.Tensor:
        draws = torch.empty(inputs.shape, dtype=torch.int16, device=inputs.device).random_()
        keep = draws >= threshold
        ctx.save_for_backward(keep)
        ctx.scale = scale  # type: ignore[attr-defined]
        return torch.where(keep, inputs, 0).mul_(scale)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors  # type: ignore[attr-defined]
        scale: float = ctx.scale  # type: ignore[attr-defined]
        return torch.where(keep, grad_output, 0).mul_(scale), None, None


class MaskedDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU training path draws a cheaper mask (see below).

    In training on a CPU each element is zeroed when a uniform 15-bit integer falls below
    ``round(p * 32768)``, so the drop probability is ``p`` rounded to a multiple of
    1/32768 (0.2 becomes 0.20001), and kept elements are scaled by ``1 / (1 - p)`` as in
    ``nn.Dropout``. The draws come from torch's default generator, so a seed still fixes
    them. On other devices, in evaluation and with ``p == 0`` it is ``nn.Dropout``.

    Example:
        >>> layer = MaskedDropout(0.5).eval()
        >>> layer(torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or inputs.device.type != "cpu" or self.inplace:
            return super().forward(inputs)
        threshold = round(self.p * 32768)
        return _MaskedDropout.apply(inputs, threshold, 1.0 / (1.0 - self.p))


class MLP(nn.Module):
    """Stacked ``Linear -> BatchNorm1d -> ReLU -> Dropout`` layers, one per hidden size.

    The ``Linear`` layers have no bias: the BatchNorm right after subtracts the batch mean,
    so a bias there has a true gradient of zero, and Adam would turn the rounding noise of
    that gradient into random steps. BatchNorm's own shift plays the bias's role.

    With no hidden sizes it is the identity, so an empty tower feeds its head directly.
    BatchNorm needs at least two rows per batch in training mode; evaluation takes any.

    Args:
        input_dim: width of the input.
        hidden: width of each layer; the last is :attr:`output_dim`.
        dropout: drop probability after each layer (0 leaves the dropout out).

    Example:
        >>> mlp = MLP(6, (4, 3), dropout=0.0)
        >>> mlp(torch.randn(5, 6)).shape
        torch.Size([5, 3])
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__()
        if input_dim < 1 or any(size < 1 for size in hidden):
            raise ConfigError(
                f"MLP sizes must be positive, got input {input_dim} and hidden {tuple(hidden)}"
            )
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size, bias=False), nn.BatchNorm1d(size), nn.ReLU()]
            if dropout > 0:
                layers.append(MaskedDropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.output_dim = width

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Map ``[B, input_dim]`` to ``[B, output_dim]``."""
        return self.layers(inputs)

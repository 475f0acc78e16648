"""Count the multiply-add work of a model's linear layers on a real forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from taa.errors import ConfigError
from taa.models.base import MultiTaskModel


def count_linear_flops(
    model: nn.Module, batch_size: int, inputs: Sequence[torch.Tensor] | None = None
) -> int:
    """Forward FLOPs of every ``nn.Linear`` call: ``2 * in_features * out_features * rows``.

    Forward hooks count each application of each ``Linear`` during one forward pass in
    evaluation mode and without gradients (a layer applied twice counts twice; ``rows``
    is the number of input vectors, ``B`` for a ``[B, in]`` input). Embedding lookups,
    normalisation, activations, softmax and the expert mixing are not counted: at the
    paper's sizes they are a small fraction of the linear work.

    Args:
        model: the module to measure; its training mode is restored afterwards.
        batch_size: rows ``B`` of the measured batch.
        inputs: the positional inputs of ``model``, each with ``batch_size`` rows. Leave
            out for a :class:`~taa.models.base.MultiTaskModel`, which gets an all-OOV
            categorical batch ``[B, F]`` and zero numerical features ``[B, N]``.

    Returns:
        The FLOP count of one forward pass over ``batch_size`` rows.

    Example:
        >>> mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> count_linear_flops(mlp, 5, inputs=[torch.zeros(5, 3)])
        200
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 to count FLOPs, got {batch_size}")
    arguments = list(inputs) if inputs is not None else _default_inputs(model, batch_size)
    for position, tensor in enumerate(arguments):
        if tensor.dim() == 0 or tensor.shape[0] != batch_size:
            raise ConfigError(
                f"input {position} has shape {tuple(tensor.shape)}; its first dimension must "
                f"be batch_size={batch_size}; pass inputs with {batch_size} rows"
            )

    total = 0

    def count(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if not isinstance(module, nn.Linear):
            raise TypeError(f"the FLOP hook is for nn.Linear, got {type(module).__name__}")
        rows = args[0].numel() // module.in_features
        total += 2 * module.in_features * module.out_features * rows

    handles = [
        module.register_forward_hook(count)
        for module in model.modules()
        if isinstance(module, nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*arguments)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def _default_inputs(model: nn.Module, batch_size: int) -> list[torch.Tensor]:
    if not isinstance(model, MultiTaskModel):
        raise ConfigError(
            f"cannot make inputs for a {type(model).__name__}; pass inputs=[...] with "
            f"{batch_size} rows, or give a taa MultiTaskModel"
        )
    device = next(model.parameters()).device
    fields = len(model.spec.vocab_sizes)
    categorical = torch.zeros(batch_size, fields, dtype=torch.long, device=device)
    numerical = torch.zeros(batch_size, model.spec.num_numerical, device=device)
    return [categorical, numerical]

"""Critics and domain classifiers that look at one task's features ``[B, D]``.

* :class:`Critic`: a small MLP with a plain linear output, the Wasserstein critic of
  Task-Adversarial Adaptation. Its output is an unbounded score, never a probability.
* :func:`gradient_penalty`: the WGAN-GP penalty that keeps a critic close to 1-Lipschitz.
* :func:`reverse_gradient`: identity forward, negated and scaled gradient backward (DANN).
* :class:`DomainClassifier`: a critic-shaped MLP whose output is a domain logit (DANN).
"""

from __future__ import annotations

import torch
from torch import nn

from taa.errors import ConfigError


def _mlp(input_dim: int, hidden: tuple[int, ...], output_bias: bool) -> nn.Sequential:
    """Linear + LeakyReLU per hidden size, ending in a plain ``Linear(., 1)``."""
    if input_dim < 1:
        raise ConfigError(f"a critic needs a feature width of at least 1, got {input_dim}")
    if any(size < 1 for size in hidden):
        raise ConfigError(
            f"option critic_hidden has a size below 1: {hidden}; give positive sizes such as 64"
        )
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        # LeakyReLU rather than ReLU: a critic with dead units gives the encoder no signal.
        layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
        width = size
    layers.append(nn.Linear(width, 1, bias=output_bias))
    return nn.Sequential(*layers)


class Critic(nn.Module):
    """A Wasserstein critic over one task's features.

    No normalisation layer (a batch statistic would break the per-sample gradient
    penalty) and no output squashing: the critic's score must be free to grow so that
    ``mean critic(source) - mean critic(target)`` estimates a Wasserstein-1 distance. The
    output layer has no bias: a constant cancels in that difference and in the penalty,
    so it would never be trained.

    Args:
        input_dim: task feature width D.
        hidden: hidden layer sizes (default one layer of 64).

    Example:
        >>> critic = Critic(8, hidden=(4,))
        >>> critic(torch.zeros(3, 8)).shape
        torch.Size([3])
    """

    output_bias = False

    def __init__(self, input_dim: int, hidden: tuple[int, ...] = (64,)) -> None:
        super().__init__()
        self.network = _mlp(input_dim, tuple(hidden), self.output_bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scores ``[B]`` of features ``[B, D]``."""
        return self.network(features).squeeze(-1)


class DomainClassifier(Critic):
    """A domain classifier over one task's features: its output is the logit of "target".

    Same body as :class:`Critic`; it is trained with binary cross-entropy on logits, so
    it also ends in a plain linear layer (the sigmoid lives inside the loss), with a bias
    since the two domains need not be balanced.
    """

    output_bias = True


def gradient_penalty(
    critic: nn.Module,
    source_features: torch.Tensor,
    target_features: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty: ``mean((||grad critic(x_hat)||_2 - 1)^2)`` at random interpolations.

    ``x_hat = source + alpha * (target - source)`` with one ``alpha ~ U(0, 1)`` per row.
    The penalty is a mean over rows, so it does not grow with the batch size. Both
    feature tensors should be detached; the graph of the gradient is kept so that the
    penalty can be back-propagated into the critic.

    Args:
        critic: maps ``[B, D]`` to ``[B]`` scores.
        source_features: ``[B, D]``.
        target_features: ``[B, D]``; rows are paired with ``source_features`` in order,
            so both must have the same number of rows.
        generator: draws ``alpha``; the global torch generator when omitted.

    Returns:
        A scalar tensor.

    Example:
        >>> linear = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = linear.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> penalty = gradient_penalty(lambda x: linear(x).squeeze(-1), torch.zeros(5, 2),
        ...                            torch.ones(5, 2))
        >>> round(penalty.item(), 4)  # ||w|| = 5, so (5 - 1)^2
        16.0
    """
    if source_features.shape != target_features.shape:
        raise ValueError(
            f"gradient penalty pairs rows: source features {tuple(source_features.shape)} and "
            f"target features {tuple(target_features.shape)} must have the same shape"
        )
    rows = source_features.shape[0]
    # Drawn on the features' device: a host-side draw would force a copy (and a sync) per step.
    device = generator.device if generator is not None else source_features.device
    alpha = torch.rand(rows, 1, generator=generator, device=device)
    alpha = alpha.to(device=source_features.device, dtype=source_features.dtype)
    mixed = (source_features + alpha * (target_features - source_features)).requires_grad_(True)
    scores = critic(mixed)
    (gradient,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((gradient.norm(2, dim=1) - 1.0) ** 2).mean()


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, inputs: torch.Tensor, scale: float
    ) -> torch.Tensor:
        ctx.scale = scale  # type: ignore[attr-defined]
        return inputs.view_as(inputs)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_output: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad_output, None  # type: ignore[attr-defined]


def reverse_gradient(inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-scale`` going back.

    Example:
        >>> x = torch.ones(2, requires_grad=True)
        >>> reverse_gradient(x, 0.5).sum().backward()
        >>> x.grad.tolist()
        [-0.5, -0.5]
    """
    return _ReverseGradient.apply(inputs, scale)


class GradientReversal(nn.Module):
    """Module form of :func:`reverse_gradient`."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return reverse_gradient(inputs, self.scale)

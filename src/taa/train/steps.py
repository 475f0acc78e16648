"""Batch plans and optimisation steps of pretraining, fine-tuning, TAA and DANN.

Every step returns *detached* loss tensors and never calls ``.item()``: the loop sums
them on the device and copies them to the host once per epoch.

Shapes: ``B`` rows per domain in a step, ``T`` tasks, ``D`` task feature width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from taa.data.batches import Batch, IndexStream, PairedSampler, TensorSplit, epoch_slices
from taa.distributed import all_reduce_gradients, current
from taa.models.base import ModelOutput, MultiTaskModel
from taa.modules.critic import gradient_penalty, reverse_gradient
from taa.train.evaluate import fetch
from taa.train.runtime import autocast

Forward = Callable[[torch.Tensor, torch.Tensor], ModelOutput]


class ShuffledPasses:
    """One shuffled pass over a split per epoch; epoch ``e``'s order depends only on
    ``(seed, e)``, so the plan has no state to save.

    Example:
        >>> plan = ShuffledPasses(5, batch_size=2, seed=0)
        >>> sorted(torch.cat([index for (index,) in plan.epoch(1)]).tolist())
        [0, 1, 2, 3, 4]
    """

    def __init__(self, rows: int, batch_size: int, seed: int) -> None:
        self.rows = rows
        self.seed = seed
        self.bounds = epoch_slices(rows, batch_size, training=True)
        self.steps = len(self.bounds)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.rows, generator=generator)
        for start, stop in self.bounds:
            yield (order[start:stop],)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class TargetPasses:
    """``ceil(target_rows / batch_size)`` full batches of target rows per epoch, from an
    :class:`~taa.data.batches.IndexStream` seeded like :class:`PairedSampler`'s target
    side, so fine-tuning sees the same target batches as TAA with the same seed.
    """

    def __init__(self, rows: int, batch_size: int, seed: int) -> None:
        self.stream = IndexStream(rows, seed=seed + 1)
        self.batch_size = batch_size
        self.steps = math.ceil(rows / batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor]]:
        for _ in range(self.steps):
            yield (self.stream.next(self.batch_size),)

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


class PairedPasses:
    """Source/target index pairs; an epoch is one pass over the target sample."""

    def __init__(self, source_rows: int, target_rows: int, batch_size: int, seed: int) -> None:
        self.sampler = PairedSampler(source_rows, target_rows, batch_size, seed)
        self.steps = math.ceil(target_rows / batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.sampler.epoch(self.steps)

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def slice_output(output: ModelOutput, start: int, stop: int) -> ModelOutput:
    """Rows ``start:stop`` of a model output, in float32 (autocast may give bfloat16)."""
    rows = output.logits.shape[0]
    return ModelOutput(
        logits=output.logits[start:stop].float(),
        probabilities=output.probabilities[start:stop].float(),
        features=tuple(feature[start:stop].float() for feature in output.features),
        extras={
            key: value[start:stop] if value.dim() and value.shape[0] == rows else value
            for key, value in output.extras.items()
        },
    )


def concatenate(first: Batch, second: Batch) -> Batch:
    """Rows of ``first`` then ``second`` in one batch (one forward pass for both domains)."""
    return Batch(
        categorical=torch.cat([first.categorical, second.categorical]),
        numerical=torch.cat([first.numerical, second.numerical]),
        labels=torch.cat([first.labels, second.labels]),
        groups=torch.cat([first.groups, second.groups]),
    )


class SupervisedStep:
    """Weighted task losses on labelled rows: pretraining, fine-tuning, target-only.

    With a ``source`` split and ``source_weight > 0`` each step also adds
    ``source_weight`` times the task losses of a paired source batch.

    ``loss_scale`` multiplies the loss before ``backward`` only (the returned losses are
    unscaled): under data-parallel training it is ``W * local rows / global rows``, so
    that DDP's mean of the ranks' gradients is the gradient of the global batch's mean
    loss (see :class:`taa.distributed.ShardPlan`). Plans may also hand a ready
    :class:`~taa.data.batches.Batch` instead of indices (streamed data).
    """

    def __init__(
        self,
        model: MultiTaskModel,
        forward: Forward,
        optimizer: torch.optim.Optimizer,
        target: TensorSplit,
        *,
        device: torch.device,
        precision: str,
        task_weights: torch.Tensor,
        source: TensorSplit | None = None,
        source_weight: float = 0.0,
        loss_scale: float = 1.0,
    ) -> None:
        self.model = model
        self.loss_scale = loss_scale
        self.forward = forward
        self.optimizer = optimizer
        self.target = target
        self.source = source
        self.source_weight = source_weight
        self.device = device
        self.precision = precision
        self.task_weights = task_weights.to(device)

    def labelled_loss(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(weighted total, per-task losses [T])`` of one domain's rows."""
        task_loss = self.model.task_losses(output, labels)
        total = (self.task_weights * task_loss).sum() + self.model.auxiliary_loss(output, labels)
        return total, task_loss

    def __call__(self, *indices: torch.Tensor) -> dict[str, torch.Tensor]:
        target_index = indices[-1]
        target = fetch(self.target, target_index, self.device)
        source = fetch(self.source, indices[0], self.device) if len(indices) > 1 else None
        batch = concatenate(source, target) if source is not None else target
        with autocast(self.device, self.precision):
            output = self.forward(batch.categorical, batch.numerical)
        offset = len(source) if source is not None else 0
        loss, task_loss = self.labelled_loss(
            slice_output(output, offset, len(batch)), target.labels
        )
        if source is not None and self.source_weight > 0:
            source_loss, _ = self.labelled_loss(slice_output(output, 0, offset), source.labels)
            loss = loss + self.source_weight * source_loss
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.loss_scale).backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "task_loss": task_loss.detach()}


def set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


class TaaStep(SupervisedStep):
    """One Task-Adversarial Adaptation step: ``critic_steps`` critic updates, then one
    model update.

    One forward pass of the concatenated ``[source; target]`` batch (``2B`` rows) gives
    every task's features ``[2B, D]``. The critic updates reuse these features detached
    (no gradient reaches the model); critic ``t`` minimises

        ``mean critic_t(target) - mean critic_t(source) + gp_weight * penalty_t``

    The model update then minimises the weighted target task losses, plus
    ``source_weight`` times the source task losses, plus, per task,
    ``adversarial_weight * -mean critic_t(target features)`` with the critics frozen.
    """

    def __init__(
        self,
        *args: Any,
        critics: nn.ModuleList,
        critic_optimizer: torch.optim.Optimizer,
        critic_steps: int,
        gp_weight: float,
        adversarial_weight: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.critics = critics
        self.critic_optimizer = critic_optimizer
        self.critic_steps = critic_steps
        self.gp_weight = gp_weight
        self.adversarial_weight = adversarial_weight

    def critic_update(self, features: list[torch.Tensor], rows: int) -> torch.Tensor:
        """``critic_steps`` updates of every critic on detached features; mean losses ``[T]``."""
        total = torch.zeros(len(self.critics), device=features[0].device)
        for _ in range(self.critic_steps):
            losses = []
            for critic, feature in zip(self.critics, features, strict=True):
                source_features, target_features = feature[:rows], feature[rows:]
                penalty = gradient_penalty(critic, source_features, target_features)
                losses.append(
                    critic(target_features).mean()
                    - critic(source_features).mean()
                    + self.gp_weight * penalty
                )
            stacked = torch.stack(losses)
            self.critic_optimizer.zero_grad(set_to_none=True)
            # Critics share no parameters, so one backward of the sum trains each on its own loss.
            (stacked.sum() * self.loss_scale).backward()
            # The penalty's double backward rules out DDP for critics: average by hand.
            all_reduce_gradients(self.critics, current())
            self.critic_optimizer.step()
            total += stacked.detach()
        self.critic_optimizer.zero_grad(set_to_none=True)
        return total / self.critic_steps

    def __call__(self, *indices: torch.Tensor) -> dict[str, torch.Tensor]:
        source_index, target_index = indices
        source = fetch(self.source, source_index, self.device)
        target = fetch(self.target, target_index, self.device)
        rows = len(source)
        batch = concatenate(source, target)
        with autocast(self.device, self.precision):
            output = self.forward(batch.categorical, batch.numerical)
        features = [feature.float() for feature in output.features]

        critic_loss = self.critic_update([feature.detach() for feature in features], rows)

        loss, task_loss = self.labelled_loss(slice_output(output, rows, len(batch)), target.labels)
        if self.source_weight > 0:
            source_loss, _ = self.labelled_loss(slice_output(output, 0, rows), source.labels)
            loss = loss + self.source_weight * source_loss
        set_trainable(self.critics, False)
        adversarial = torch.stack(
            [
                -critic(feature[rows:]).mean()
                for critic, feature in zip(self.critics, features, strict=True)
            ]
        )
        loss = loss + self.adversarial_weight * adversarial.sum()
        self.optimizer.zero_grad(set_to_none=True)
        (loss * self.loss_scale).backward()
        self.optimizer.step()
        set_trainable(self.critics, True)
        return {
            "loss": loss.detach(),
            "task_loss": task_loss.detach(),
            "critic_loss": critic_loss,
            "adversarial_loss": adversarial.detach(),
        }


class DannStep(SupervisedStep):
    """One DANN step: task losses plus per-task domain classifiers behind gradient reversal.

    Classifier ``t`` sees task ``t``'s features ``[2B, D]`` through
    :func:`~taa.modules.critic.reverse_gradient` with scale ``adversarial_weight`` and
    is trained with binary cross-entropy (source 0, target 1). One backward pass trains
    the classifiers to tell the domains apart and pushes the model, through the reversed
    gradient, to make them indistinguishable.
    """

    def __init__(
        self,
        *args: Any,
        classifiers: nn.ModuleList,
        classifier_optimizer: torch.optim.Optimizer,
        adversarial_weight: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.classifiers = classifiers
        self.classifier_optimizer = classifier_optimizer
        self.adversarial_weight = adversarial_weight

    def __call__(self, *indices: torch.Tensor) -> dict[str, torch.Tensor]:
        source_index, target_index = indices
        source = fetch(self.source, source_index, self.device)
        target = fetch(self.target, target_index, self.device)
        rows = len(source)
        batch = concatenate(source, target)
        with autocast(self.device, self.precision):
            output = self.forward(batch.categorical, batch.numerical)

        loss, task_loss = self.labelled_loss(slice_output(output, rows, len(batch)), target.labels)
        if self.source_weight > 0:
            source_loss, _ = self.labelled_loss(slice_output(output, 0, rows), source.labels)
            loss = loss + self.source_weight * source_loss
        domain = torch.ones(len(batch), device=self.device)
        domain[:rows] = 0.0
        domain_loss = torch.stack(
            [
                F.binary_cross_entropy_with_logits(
                    classifier(reverse_gradient(feature.float(), self.adversarial_weight)), domain
                )
                for classifier, feature in zip(self.classifiers, output.features, strict=True)
            ]
        )
        loss = loss + domain_loss.sum()
        self.optimizer.zero_grad(set_to_none=True)
        self.classifier_optimizer.zero_grad(set_to_none=True)
        (loss * self.loss_scale).backward()
        all_reduce_gradients(self.classifiers, current())
        self.optimizer.step()
        self.classifier_optimizer.step()
        return {
            "loss": loss.detach(),
            "task_loss": task_loss.detach(),
            "critic_loss": domain_loss.detach(),
        }

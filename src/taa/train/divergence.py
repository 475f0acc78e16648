"""An independent Wasserstein estimate between a model's source and target task features.

The critics that TAA trains are players in its game, so their own estimate is not a fair
measure of how well features are aligned (and other methods have no critics at all).
:func:`estimate_wasserstein` freezes a model, extracts every task's features on both
domains, trains a *fresh* seeded WGAN-GP critic per task on one half of the rows and
reports ``mean critic(source) - mean critic(target)`` on the other half. The same
estimator, with the same seed, can then compare any two models.
"""

from __future__ import annotations

import torch

from taa.data.batches import TensorSplit
from taa.models.base import MultiTaskModel
from taa.modules.critic import Critic, gradient_penalty
from taa.train.evaluate import collect_outputs


def _halves(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(rows, generator=generator)
    middle = max(rows // 2, 1)
    return order[:middle], order[middle:] if rows > 1 else order


def estimate_wasserstein(
    model: MultiTaskModel,
    source: TensorSplit,
    target: TensorSplit,
    *,
    steps: int = 300,
    batch_size: int = 256,
    critic_hidden: tuple[int, ...] = (64,),
    gp_weight: float = 10.0,
    lr: float = 1e-3,
    normalize: bool = True,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Per-task Wasserstein-1 estimate between ``model``'s source and target features.

    Args:
        model: any registered model; it is put in eval mode and not changed.
        source, target: splits of each domain (labels are not used).
        steps: critic updates per task.
        batch_size: rows per domain and update.
        critic_hidden: hidden sizes of each fresh critic.
        gp_weight: gradient penalty weight.
        lr: the critics' Adam learning rate.
        normalize: divide each task's features by their pooled standard deviation (one
            number per task), so a model cannot look aligned just by shrinking its
            features.
        seed: seeds the critics, the halves and the batches.
        device: where to compute.

    Returns:
        ``{task: estimate}``, measured on the held-out half of each domain's rows.
    """
    device = torch.device(device)
    _, source_features = collect_outputs(model, source, device=device, with_features=True)
    _, target_features = collect_outputs(model, target, device=device, with_features=True)
    generator = torch.Generator().manual_seed(seed)
    source_fit, source_held = _halves(len(source), generator)
    target_fit, target_held = _halves(len(target), generator)
    estimates = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for task, source_all, target_all in zip(
            model.spec.tasks, source_features or [], target_features or [], strict=True
        ):
            # Inference tensors cannot enter autograd; clone them into ordinary tensors.
            source_all, target_all = source_all.clone(), target_all.clone()
            if normalize:
                scale = torch.cat([source_all, target_all]).std(dim=0).pow(2).mean().sqrt()
                scale = scale.clamp_min(1e-12)
                source_all, target_all = source_all / scale, target_all / scale
            estimates[task] = _fit_and_measure(
                source_all[source_fit.to(device)],
                target_all[target_fit.to(device)],
                source_all[source_held.to(device)],
                target_all[target_held.to(device)],
                steps=steps,
                batch_size=batch_size,
                critic_hidden=critic_hidden,
                gp_weight=gp_weight,
                lr=lr,
                generator=generator,
            )
    return estimates


def _fit_and_measure(
    source_fit: torch.Tensor,
    target_fit: torch.Tensor,
    source_held: torch.Tensor,
    target_held: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    critic_hidden: tuple[int, ...],
    gp_weight: float,
    lr: float,
    generator: torch.Generator,
) -> float:
    critic = Critic(source_fit.shape[1], critic_hidden).to(source_fit.device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))
    rows = min(batch_size, len(source_fit), len(target_fit))
    for _ in range(steps):
        source_rows = torch.randint(len(source_fit), (rows,), generator=generator)
        target_rows = torch.randint(len(target_fit), (rows,), generator=generator)
        source_batch = source_fit[source_rows.to(source_fit.device)]
        target_batch = target_fit[target_rows.to(target_fit.device)]
        loss = (
            critic(target_batch).mean()
            - critic(source_batch).mean()
            + gp_weight * gradient_penalty(critic, source_batch, target_batch)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(critic(source_held).mean() - critic(target_held).mean())

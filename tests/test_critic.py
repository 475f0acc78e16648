"""Critics, the gradient penalty, gradient reversal, and what each TAA phase may change."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taa.data.batches import TensorSplit
from taa.errors import ConfigError
from taa.models.base import available_models, build_model
from taa.modules.critic import Critic, DomainClassifier, gradient_penalty, reverse_gradient
from taa.train.steps import DannStep, TaaStep
from test_train_support import TINY_MODEL, make_rows, tiny_schema


def linear_critic(weights: list[float], bias: float = 0.3) -> nn.Linear:
    critic = nn.Linear(len(weights), 1)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([weights]))
        critic.bias.fill_(bias)
    return critic


def test_critic_output_changes_with_its_input() -> None:
    """Check that a fresh critic gives different scores to different features."""
    torch.manual_seed(0)
    critic = Critic(6, hidden=(8,))
    features = torch.randn(4, 6)
    assert not torch.allclose(critic(features), critic(features + 1.0))


def test_critic_ends_in_a_plain_linear_layer() -> None:
    """Check that critic and domain classifier end in nn.Linear (no sigmoid or softmax)."""
    assert isinstance(Critic(3).network[-1], nn.Linear)
    assert isinstance(DomainClassifier(3).network[-1], nn.Linear)


def test_critic_scores_are_unbounded() -> None:
    """Check that a critic's score can leave [0, 1]: it is not a probability."""
    critic = Critic(2, hidden=())
    with torch.no_grad():
        critic.network[-1].weight.fill_(10.0)
    assert critic(torch.full((1, 2), 5.0)).item() == pytest.approx(100.0)


def test_critic_refuses_a_zero_hidden_size() -> None:
    """Check that a hidden size of 0 is refused, naming the option."""
    with pytest.raises(ConfigError, match="critic_hidden has a size below 1"):
        Critic(4, hidden=(0,))


def test_gradient_penalty_of_a_linear_critic_worked_by_hand() -> None:
    """Check that a linear critic's penalty is (||w|| - 1)^2 = (sqrt(1 + 4 + 4) - 1)^2 = 4."""
    critic = linear_critic([1.0, 2.0, 2.0])
    penalty = gradient_penalty(
        lambda x: critic(x).squeeze(-1), torch.randn(7, 3), torch.randn(7, 3)
    )
    assert penalty.item() == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize("rows", [1, 5, 300])
def test_gradient_penalty_does_not_depend_on_batch_size(rows: int) -> None:
    """Check that the penalty is a mean over rows: same value, (0.6 - 1)^2, at any batch size."""
    critic = linear_critic([0.0, 0.6])
    penalty = gradient_penalty(
        lambda x: critic(x).squeeze(-1), torch.zeros(rows, 2), torch.ones(rows, 2)
    )
    assert penalty.item() == pytest.approx(0.16, rel=1e-6)


def test_gradient_penalty_trains_the_critic() -> None:
    """Check that the penalty's gradient reaches the critic's weights (create_graph kept).

    d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||; for w = (3, 4): 2 * 4 * (0.6, 0.8).
    """
    critic = linear_critic([3.0, 4.0])
    gradient_penalty(
        lambda x: critic(x).squeeze(-1), torch.zeros(3, 2), torch.ones(3, 2)
    ).backward()
    assert critic.weight.grad[0].tolist() == pytest.approx([4.8, 6.4], rel=1e-6)


def test_gradient_penalty_refuses_unpaired_rows() -> None:
    """Check that source and target features of different shapes are refused."""
    with pytest.raises(ValueError, match="must have the same shape"):
        gradient_penalty(Critic(2), torch.zeros(3, 2), torch.zeros(4, 2))


def test_reverse_gradient_negates_and_scales_the_gradient() -> None:
    """Check that the reversal is the identity forward and -scale * gradient backward."""
    inputs = torch.tensor([1.0, -2.0], requires_grad=True)
    outputs = reverse_gradient(inputs, 0.25)
    (outputs * torch.tensor([2.0, 3.0])).sum().backward()
    assert outputs.tolist() == [1.0, -2.0]
    assert inputs.grad.tolist() == [-0.5, -0.75]


def _parts(method: str = "taa", model_name: str = "mmoe") -> tuple:
    torch.manual_seed(0)
    schema = tiny_schema()
    source = TensorSplit.from_arrays(make_rows(32, 0), schema)
    target = TensorSplit.from_arrays(make_rows(32, 1, shift=1.0), schema)
    model = build_model(model_name, schema, TINY_MODEL)
    critics = nn.ModuleList(Critic(TINY_MODEL.feature_dim, (8,)) for _ in schema.tasks)
    model_optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    critic_optimizer = torch.optim.Adam(critics.parameters(), lr=1e-2)
    common = {
        "device": torch.device("cpu"),
        "precision": "fp32",
        "task_weights": torch.ones(2),
        "source": source,
        "source_weight": 1.0,
    }
    if method == "dann":
        step = DannStep(
            model,
            model,
            model_optimizer,
            target,
            **common,
            classifiers=critics,
            classifier_optimizer=critic_optimizer,
            adversarial_weight=0.5,
        )
    else:
        step = TaaStep(
            model,
            model,
            model_optimizer,
            target,
            **common,
            critics=critics,
            critic_optimizer=critic_optimizer,
            critic_steps=2,
            gp_weight=10.0,
            adversarial_weight=0.1,
        )
    return step, model, critics


def _snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def _changed(module: nn.Module, before: list[torch.Tensor]) -> list[bool]:
    return [
        not torch.equal(parameter, old)
        for parameter, old in zip(module.parameters(), before, strict=True)
    ]


def _features(step: TaaStep) -> list[torch.Tensor]:
    index = torch.arange(16)
    source, target = step.source.take(index), step.target.take(index)
    output = step.model(
        torch.cat([source.categorical, target.categorical]),
        torch.cat([source.numerical, target.numerical]),
    )
    return list(output.features)


def test_critic_update_changes_every_critic_and_not_the_model() -> None:
    """Check that the critic phase moves every critic parameter and no model parameter."""
    step, model, critics = _parts()
    model_before, critics_before = _snapshot(model), _snapshot(critics)
    features = [feature.detach() for feature in _features(step)]
    step.critic_update(features, rows=16)
    assert all(_changed(critics, critics_before))
    assert not any(_changed(model, model_before))


def test_critic_update_sends_no_gradient_to_the_model() -> None:
    """Check that features handed to the critic phase are detached: no model gradient appears."""
    step, model, _ = _parts()
    features = _features(step)
    detached = [feature.detach() for feature in features]
    assert not any(feature.requires_grad for feature in detached)
    step.critic_update(detached, rows=16)
    assert all(parameter.grad is None for parameter in model.parameters())


def test_model_update_changes_the_model_and_not_the_critics() -> None:
    """Check that a whole TAA step leaves the critics as the critic phase left them.

    The critics are recorded when the critic phase ends; after the model phase they must
    be unchanged and hold no gradient.
    """
    step, model, critics = _parts()
    model_before = _snapshot(model)
    calls: list[list[torch.Tensor]] = []
    original = step.critic_update

    def recording_update(features: list[torch.Tensor], rows: int) -> torch.Tensor:
        result = original(features, rows)
        calls.append(_snapshot(critics))
        return result

    step.critic_update = recording_update  # type: ignore[method-assign]
    step(torch.arange(16), torch.arange(16))
    assert len(calls) == 1
    assert not any(_changed(critics, calls[0]))
    assert all(_changed(model, model_before)[:3])
    assert all(parameter.grad is None for parameter in critics.parameters())


@pytest.mark.parametrize("model_name", available_models())
def test_taa_step_gives_a_gradient_to_every_model_parameter(model_name: str) -> None:
    """Check that every parameter of every model moves in one TAA step."""
    step, model, _ = _parts(model_name=model_name)
    before = _snapshot(model)
    step(torch.arange(16), torch.arange(16))
    names = [name for name, _ in model.named_parameters()]
    unchanged = [
        name for name, moved in zip(names, _changed(model, before), strict=True) if not moved
    ]
    assert unchanged == []


def test_taa_step_returns_detached_per_task_losses() -> None:
    """Check that a TAA step reports a total and per-task losses without autograd history."""
    step, _, _ = _parts()
    losses = step(torch.arange(16), torch.arange(16))
    assert set(losses) == {"loss", "task_loss", "critic_loss", "adversarial_loss"}
    assert all(not value.requires_grad for value in losses.values())
    assert losses["task_loss"].shape == (2,)
    assert losses["critic_loss"].shape == (2,)


def test_dann_step_trains_classifiers_and_model_together() -> None:
    """Check that one DANN step moves both the domain classifiers and the model."""
    step, model, classifiers = _parts("dann")
    model_before, classifiers_before = _snapshot(model), _snapshot(classifiers)
    step(torch.arange(16), torch.arange(16))
    assert all(_changed(classifiers, classifiers_before))
    assert any(_changed(model, model_before))

"""Tests of the multi-task rankers: shapes, gradients, determinism, sizes, special losses."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from taa.data.schema import InputSpec
from taa.errors import ConfigError
from taa.models import (
    ModelConfig,
    ModelOutput,
    MultiTaskModel,
    available_models,
    build_model,
    count_linear_flops,
)
from taa.models.aitm import AITMModel
from taa.models.esmm import ESMMModel

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aliexpress-real"

ALL_MODELS = ["aitm", "esmm", "mmoe", "omoe", "ple", "shared-bottom", "single-task"]
ANY_TASK_MODELS = ["mmoe", "omoe", "ple", "shared-bottom", "single-task"]
TWO_TASKS = ("click", "conversion")
SPEC = InputSpec(vocab_sizes=(5, 4, 3), num_numerical=3, tasks=TWO_TASKS)
SPEC_3 = InputSpec(vocab_sizes=(5, 4, 3), num_numerical=3, tasks=("click", "cart", "conversion"))


def small_config(**changes: object) -> ModelConfig:
    """Tiny sizes: embedding 8, experts 16-8, towers 8, 3 experts, PLE 2 task + 1 shared."""
    values: dict[str, object] = {
        "embedding_dim": 8,
        "expert_hidden": (16, 8),
        "tower_hidden": (8,),
        "num_experts": 3,
        "ple_task_experts": 2,
        "ple_shared_experts": 1,
        "ple_levels": 2,
    }
    values.update(changes)
    return ModelConfig(**values)  # type: ignore[arg-type]


def make_inputs(spec: InputSpec, rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    categorical = torch.stack(
        [torch.randint(1, size, (rows,), generator=generator) for size in spec.vocab_sizes], dim=1
    )
    numerical = torch.rand(rows, spec.num_numerical, generator=generator)
    return categorical, numerical


def both_class_labels(rows: int, tasks: int) -> torch.Tensor:
    """Alternating 0/1 labels (shifted per task) so every task sees both classes."""
    return torch.tensor([[float((row + task) % 2) for task in range(tasks)] for row in range(rows)])


def graph_leaves(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every leaf tensor the autograd graph of ``tensor`` accumulates gradient into."""
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(parent for parent, _ in node.next_functions)
    return leaves


def test_registry_holds_every_model() -> None:
    """Check that the registry lists exactly the seven documented model names."""
    assert available_models() == sorted(ALL_MODELS)


def test_unknown_model_name_is_refused() -> None:
    """Check that build_model names the unknown model and the choices."""
    with pytest.raises(ConfigError, match=r"unknown model 'mmeo'; choose one of \['aitm'"):
        build_model("mmeo", SPEC, small_config())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_output_shapes_and_probability_ranges(name: str) -> None:
    """Check that logits, probabilities and features have the documented shapes."""
    torch.manual_seed(0)
    model = build_model(name, SPEC, small_config())
    output = model(*make_inputs(SPEC, rows=6))

    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (6, 2)
    assert output.probabilities.shape == (6, 2)
    assert bool(((output.probabilities >= 0) & (output.probabilities <= 1)).all())
    torch.testing.assert_close(torch.sigmoid(output.logits), output.probabilities)
    assert len(output.features) == 2
    assert all(feature.shape == (6, model.feature_dim) for feature in output.features)
    assert model.feature_dim == 8


@pytest.mark.parametrize("name", ANY_TASK_MODELS)
def test_three_tasks_give_three_outputs(name: str) -> None:
    """Check that models without a fixed task pair serve three tasks."""
    torch.manual_seed(0)
    model = build_model(name, SPEC_3, small_config())
    output = model(*make_inputs(SPEC_3, rows=5))

    assert output.logits.shape == (5, 3)
    assert len(output.features) == 3
    losses = model.task_losses(output, both_class_labels(5, 3))
    assert losses.shape == (3,)


@pytest.mark.parametrize("name", ["aitm", "esmm"])
def test_click_conversion_models_refuse_three_tasks(name: str) -> None:
    """Check that AITM and ESMM refuse a task list other than click then conversion."""
    with pytest.raises(ConfigError, match=r"needs exactly two ordered tasks \(click, then conv"):
        build_model(name, SPEC_3, small_config())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_parameter_receives_a_gradient(name: str) -> None:
    """Check that one backward pass reaches every parameter and only registered ones."""
    torch.manual_seed(0)
    model = build_model(name, SPEC, small_config())
    output = model(*make_inputs(SPEC, rows=8))
    labels = both_class_labels(8, 2)
    loss = model.task_losses(output, labels).sum() + model.auxiliary_loss(output, labels)
    loss.backward()

    registered = {id(parameter) for parameter in model.parameters()}
    stray = [tuple(leaf.shape) for leaf in graph_leaves(loss) if id(leaf) not in registered]
    assert stray == [], f"tensors outside model.parameters() take part: {stray}"
    silent = [
        parameter_name
        for parameter_name, parameter in model.named_parameters()
        if parameter.grad is None or not bool(parameter.grad.abs().sum() > 0)
    ]
    assert silent == []


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_mode_scores_a_single_row(name: str) -> None:
    """Check that a model in evaluation mode scores a batch of one row."""
    torch.manual_seed(0)
    model = build_model(name, SPEC, small_config()).eval()
    output = model(*make_inputs(SPEC, rows=1))

    assert output.probabilities.shape == (1, 2)
    assert bool(torch.isfinite(output.logits).all())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_same_seed_builds_the_same_model(name: str) -> None:
    """Check that two builds after the same seed give identical outputs, another seed not."""
    inputs = make_inputs(SPEC, rows=4)
    outputs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outputs.append(build_model(name, SPEC, small_config()).eval()(*inputs).logits)

    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert not torch.allclose(outputs[0], outputs[2])


# Sizes of the blocks of small_config() on SPEC, worked out from the layer sizes:
EMBEDDING_PARAMETERS = (5 + 4 + 3) * 8 + (3 * 8 + 8)  # fused table + numerical Linear(3, 8)
INPUT_WIDTH = (3 + 1) * 8  # three fields and the numerical vector, 8 wide each
# A Linear before a BatchNorm has no bias (the BatchNorm's shift replaces it).
EXPERT_ON_INPUT = (32 * 16) + 2 * 16 + (16 * 8) + 2 * 8  # Linear, BN, Linear, BN
EXPERT_ON_FEATURE = (8 * 16) + 2 * 16 + (16 * 8) + 2 * 8
TOWER = (8 * 8) + 2 * 8 + (8 * 1 + 1)  # Linear, BN, head (the head keeps its bias)


def test_mmoe_parameter_count_matches_hand_count() -> None:
    """Check MMoE's size: embeddings, 3 experts, 2 bias-free gates, 2 towers."""
    model = build_model("mmoe", SPEC, small_config())
    gates = 2 * (INPUT_WIDTH * 3)
    expected = EMBEDDING_PARAMETERS + 3 * EXPERT_ON_INPUT + gates + 2 * TOWER

    assert INPUT_WIDTH == 32 and EXPERT_ON_INPUT == 688 and TOWER == 89
    assert expected == 128 + 2064 + 192 + 178 == 2562
    assert sum(parameter.numel() for parameter in model.parameters()) == expected


def test_ple_parameter_count_matches_hand_count() -> None:
    """Check PLE's size: two levels of 2 x 2 task + 1 shared experts, shared gate on level 1."""
    model = build_model("ple", SPEC, small_config())
    level_1 = 5 * EXPERT_ON_INPUT + 2 * (INPUT_WIDTH * (2 + 1)) + INPUT_WIDTH * (2 * 2 + 1)
    level_2 = 5 * EXPERT_ON_FEATURE + 2 * (8 * (2 + 1))
    expected = EMBEDDING_PARAMETERS + level_1 + level_2 + 2 * TOWER

    assert EXPERT_ON_FEATURE == 304
    assert expected == 128 + (3440 + 192 + 160) + (1520 + 48) + 178 == 5666
    assert sum(parameter.numel() for parameter in model.parameters()) == expected


def test_shared_bottom_parameter_count_matches_hand_count() -> None:
    """Check shared-bottom's size: embeddings, one bottom MLP, two towers."""
    model = build_model("shared-bottom", SPEC, small_config())
    expected = EMBEDDING_PARAMETERS + EXPERT_ON_INPUT + 2 * TOWER

    assert sum(parameter.numel() for parameter in model.parameters()) == expected == 994


def test_encoder_and_tower_parameters_split_the_model() -> None:
    """Check that tower and encoder parameters are disjoint and cover the whole model."""
    model = build_model("mmoe", SPEC, small_config())
    towers = model.tower_parameters()
    encoder = model.encoder_parameters()

    assert sum(parameter.numel() for parameter in towers) == 2 * TOWER
    assert {id(item) for item in towers}.isdisjoint(id(item) for item in encoder)
    assert len(towers) + len(encoder) == len(list(model.parameters()))


@pytest.mark.parametrize("name", ["shared-bottom", "omoe"])
def test_shared_representation_models_give_every_task_one_feature(name: str) -> None:
    """Check that shared-bottom and OMoE hand the same feature tensor to every task."""
    model = build_model(name, SPEC_3, small_config()).eval()
    features = model(*make_inputs(SPEC_3, rows=3)).features

    assert features[0] is features[1] is features[2]


def test_aitm_constraint_loss_matches_hand_value() -> None:
    """Check AITM's constraint: 0.6 * mean(max(p_conversion - p_click, 0)) on four rows."""
    model = AITMModel(SPEC, small_config())
    probabilities = torch.tensor([[0.3, 0.5], [0.4, 0.1], [0.2, 0.2], [0.1, 0.9]])
    output = ModelOutput(
        logits=torch.logit(probabilities), probabilities=probabilities, features=()
    )

    # Row excesses 0.2, 0, 0 and 0.8: mean 0.25, times the weight 0.6.
    loss = model.auxiliary_loss(output, torch.zeros(4, 2))
    assert float(loss) == pytest.approx(0.15, abs=1e-6)


def test_aitm_constraint_weight_zero_turns_the_loss_off() -> None:
    """Check that aitm_constraint_weight=0 gives a zero auxiliary loss."""
    model = AITMModel(SPEC, small_config(aitm_constraint_weight=0.0))
    probabilities = torch.tensor([[0.1, 0.9]])
    output = ModelOutput(
        logits=torch.logit(probabilities), probabilities=probabilities, features=()
    )

    assert float(model.auxiliary_loss(output, torch.zeros(1, 2))) == 0.0


def test_aitm_attention_weights_are_a_distribution() -> None:
    """Check that AITM reports two attention weights per row that sum to one."""
    torch.manual_seed(0)
    model = AITMModel(SPEC, small_config()).eval()
    weights = model(*make_inputs(SPEC, rows=4)).extras["attention_weights"]

    assert weights.shape == (4, 2)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


def test_esmm_ctcvr_is_the_product_of_ctr_and_cvr() -> None:
    """Check ESMM's CTCVR from logits 0 and ln 3: 0.5 * 0.75 = 0.375."""
    output = ESMMModel.combine(torch.tensor([0.0]), torch.tensor([math.log(3.0)]), [])

    torch.testing.assert_close(output.probabilities, torch.tensor([[0.5, 0.375]]))
    torch.testing.assert_close(output.logits, torch.tensor([[0.0, math.log(0.375 / 0.625)]]))


def test_esmm_losses_are_binary_cross_entropy_of_the_probabilities() -> None:
    """Check ESMM's task losses against -ln p and -ln(1 - p) worked by hand."""
    model = ESMMModel(SPEC, small_config())
    output = ESMMModel.combine(torch.tensor([0.0]), torch.tensor([math.log(3.0)]), [])
    losses = model.task_losses(output, torch.tensor([[1.0, 0.0]]))

    torch.testing.assert_close(losses, torch.tensor([math.log(2.0), -math.log(0.625)]))


def test_esmm_losses_stay_finite_when_the_product_underflows() -> None:
    """Check that an underflowing CTCVR is clamped to 1e-7, so its loss is -ln(1e-7)."""
    model = ESMMModel(SPEC, small_config())
    output = ESMMModel.combine(torch.tensor([-60.0]), torch.tensor([-60.0]), [])
    losses = model.task_losses(output, torch.tensor([[1.0, 1.0]]))

    assert bool(torch.isfinite(losses).all()) and bool(torch.isfinite(output.logits).all())
    assert float(losses[1]) == pytest.approx(-math.log(1e-7), rel=1e-4)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_out_of_range_indices_score_as_oov(name: str) -> None:
    """Check that negative and too-large category indices score like index 0 (OOV)."""
    torch.manual_seed(0)
    model = build_model(name, SPEC, small_config()).eval()
    categorical, numerical = make_inputs(SPEC, rows=3)
    wild = categorical.clone()
    wild[0, 0], wild[1, 1], wild[2, 2], wild[2, 0] = -1, 4, 10**9, -(10**9)
    oov = categorical.clone()
    oov[0, 0], oov[1, 1], oov[2, 2], oov[2, 0] = 0, 0, 0, 0

    torch.testing.assert_close(model(wild, numerical).logits, model(oov, numerical).logits)
    assert not torch.allclose(model(oov, numerical).logits, model(categorical, numerical).logits)


@pytest.mark.parametrize("name", ["mmoe", "aitm"])
def test_aliexpress_rows_train(name: str) -> None:
    """Check that 30 full-batch Adam steps on 1000 real AliExpress rows lower the loss."""
    table = np.loadtxt(REAL_DATA / "A" / "train.csv", delimiter=",", skiprows=1)
    # Codes run 0..max; shifting by one keeps index 0 free for OOV, as `taa prepare` does.
    categorical = torch.from_numpy(table[:, 1:17].astype(np.int64) + 1)
    numerical = torch.from_numpy(table[:, 17:80].astype(np.float32))
    click, conversion = table[:, 80], table[:, 81]
    labels = torch.from_numpy(np.stack([click, click * conversion], axis=1).astype(np.float32))
    vocab_sizes = (10, 4, 6, 2, 21, 7, 50, 8, 7, 2, 2, 2, 2, 2, 2, 2)
    spec = InputSpec(tuple(size + 1 for size in vocab_sizes), 63, TWO_TASKS)
    torch.manual_seed(0)
    model = build_model(name, spec, small_config(dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    losses = []
    for _ in range(30):
        output = model(categorical, numerical)
        loss = model.task_losses(output, labels).sum() + model.auxiliary_loss(output, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.5 * losses[0]


def test_linear_flops_of_a_small_mlp() -> None:
    """Check 2 * B * (3*4 + 4*2) = 200 FLOPs for a 3-4-2 MLP on 5 rows."""
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    assert count_linear_flops(mlp, 5, inputs=[torch.zeros(5, 3)]) == 200


def test_linear_flops_count_each_application() -> None:
    """Check that a Linear applied twice is counted twice: 2 * 2 * (3 * 3) * 4 = 144."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.linear(self.linear(inputs))

    assert count_linear_flops(Twice(), 4, inputs=[torch.zeros(4, 3)]) == 144


def test_linear_flops_of_a_shared_bottom_model() -> None:
    """Check the FLOPs of shared-bottom on 10 rows against its layer sizes."""
    model = build_model("shared-bottom", SPEC, small_config())
    model.train()
    # numerical projection 3x8, bottom 32x16 and 16x8, two towers of 8x8 and 8x1.
    per_row = 3 * 8 + 32 * 16 + 16 * 8 + 2 * (8 * 8 + 8 * 1)

    assert count_linear_flops(model, 10) == 2 * 10 * per_row
    assert model.training


def test_linear_flops_need_inputs_for_other_modules() -> None:
    """Check that a plain module without inputs is refused with the fix named."""
    with pytest.raises(ConfigError, match=r"cannot make inputs for a Linear; pass inputs="):
        count_linear_flops(nn.Linear(2, 2), 3)


def test_model_config_fields_have_help() -> None:
    """Check that every model option carries a help text for the command line."""
    missing = [item.name for item in fields(ModelConfig) if not item.metadata.get("help")]

    assert missing == []


def test_model_config_refuses_dropout_of_one() -> None:
    """Check that dropout outside [0, 1) is refused with the value named."""
    with pytest.raises(ConfigError, match=r"dropout must be in \[0, 1\), got 1.0"):
        ModelConfig(dropout=1.0)


def test_model_config_round_trips_through_a_dict() -> None:
    """Check that to_dict and from_dict give back an equal config."""
    config = small_config(dropout=0.1)

    assert ModelConfig.from_dict(config.to_dict()) == config


def test_model_is_a_multitask_model() -> None:
    """Check that build_model takes a whole schema's spec and returns the base type."""
    assert isinstance(build_model("single-task", SPEC, small_config()), MultiTaskModel)

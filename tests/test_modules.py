"""Tests of the reusable blocks: embeddings, MLPs, experts and gates, towers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from taa.errors import ConfigError, DataError
from taa.modules.embedding import FeatureEmbedding
from taa.modules.experts import ExpertGroup, Gate, mix_experts
from taa.modules.mlp import MLP, MaskedDropout
from taa.modules.tower import Tower


def test_fused_table_reads_each_field_at_its_offset() -> None:
    """Check that field f's index i reads row offsets[f] + i of the one fused table."""
    torch.manual_seed(0)
    layer = FeatureEmbedding((3, 5, 2), num_numerical=0, embedding_dim=4)
    output = layer(torch.tensor([[2, 4, 1]]), torch.zeros(1, 0))
    table = layer.table.weight

    # Offsets are 0, 3 and 3 + 5 = 8; the table has 3 + 5 + 2 = 10 rows.
    assert table.shape == (10, 4)
    expected = torch.cat([table[0 + 2], table[3 + 4], table[8 + 1]])
    torch.testing.assert_close(output, expected.unsqueeze(0))


def test_numerical_block_is_projected_into_the_last_vector() -> None:
    """Check that the numerical features become the last E numbers: W x + b."""
    torch.manual_seed(0)
    layer = FeatureEmbedding((3,), num_numerical=2, embedding_dim=4)
    numerical = torch.tensor([[0.5, -2.0]])
    output = layer(torch.tensor([[1]]), numerical)
    weight, bias = layer.numerical.weight, layer.numerical.bias

    assert output.shape == (1, 8) and layer.output_dim == 8
    expected = bias + 0.5 * weight[:, 0] - 2.0 * weight[:, 1]
    torch.testing.assert_close(output[0, 4:], expected)


def test_out_of_range_indices_read_the_oov_row() -> None:
    """Check that -1, vocab_size and a huge index all read row 0 of their field."""
    torch.manual_seed(0)
    layer = FeatureEmbedding((3, 5), num_numerical=0, embedding_dim=2)
    wild = layer(torch.tensor([[-1, 5], [3, -(10**12)], [10**12, 7]]), torch.zeros(3, 0))
    oov = layer(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, 0))

    torch.testing.assert_close(wild, oov)


def test_int32_indices_are_accepted() -> None:
    """Check that int32 category indices give the same vectors as int64."""
    layer = FeatureEmbedding((3, 5), num_numerical=0, embedding_dim=2)
    indices = torch.tensor([[1, 4], [2, 9]])
    empty = torch.zeros(2, 0)

    torch.testing.assert_close(layer(indices.int(), empty), layer(indices, empty))


def test_wrong_number_of_categorical_columns_is_refused() -> None:
    """Check that a categorical batch with the wrong width names the expected shape."""
    layer = FeatureEmbedding((3, 5), num_numerical=1, embedding_dim=2)

    with pytest.raises(DataError, match=r"shape \(4, 3\); this model expects \[B, 2\]"):
        layer(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 1))


def test_wrong_number_of_numerical_columns_is_refused() -> None:
    """Check that a numerical batch with the wrong width names the expected shape."""
    layer = FeatureEmbedding((3, 5), num_numerical=1, embedding_dim=2)

    with pytest.raises(DataError, match=r"numerical input has shape \(4, 2\); .*\[B, 1\]"):
        layer(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2))


def test_float_category_indices_are_refused() -> None:
    """Check that float categorical input is refused with the cast to apply."""
    layer = FeatureEmbedding((3,), num_numerical=0, embedding_dim=2)

    with pytest.raises(DataError, match=r"dtype torch.float32; .* cast .* with \.long\(\)"):
        layer(torch.zeros(2, 1), torch.zeros(2, 0))


def test_mismatched_row_counts_are_refused() -> None:
    """Check that categorical and numerical inputs of different lengths are refused."""
    layer = FeatureEmbedding((3,), num_numerical=1, embedding_dim=2)

    with pytest.raises(DataError, match=r"categorical input has 3 rows but numerical input has 2"):
        layer(torch.zeros(3, 1, dtype=torch.long), torch.zeros(2, 1))


def test_empty_vocabulary_is_refused() -> None:
    """Check that a field with vocab_size 0 is refused, naming the field."""
    with pytest.raises(ConfigError, match=r"categorical field 1 has vocab_size 0"):
        FeatureEmbedding((3, 0), num_numerical=1, embedding_dim=2)


def test_oov_mapping_survives_onnx_export(tmp_path: Path) -> None:
    """Check that an exported embedding maps out-of-range indices to OOV like PyTorch."""
    import onnxruntime

    torch.manual_seed(0)
    layer = FeatureEmbedding((3, 5), num_numerical=2, embedding_dim=4).eval()
    example = (torch.tensor([[1, 4], [2, 3]]), torch.rand(2, 2))
    batch = torch.export.Dim("batch")
    path = tmp_path / "embedding.onnx"
    torch.onnx.export(
        layer,
        example,
        path,
        input_names=["categorical", "numerical"],
        dynamic_shapes=({0: batch}, {0: batch}),
    )

    categorical = np.array([[7, -5], [0, 0], [2, 3]], dtype=np.int64)
    numerical = np.random.default_rng(0).random((3, 2), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(path))
    exported = session.run(None, {"categorical": categorical, "numerical": numerical})[0]
    expected = layer(torch.from_numpy(categorical), torch.from_numpy(numerical))
    np.testing.assert_allclose(exported, expected.detach().numpy(), atol=1e-6)


def test_mlp_layer_order_is_linear_norm_relu_dropout() -> None:
    """Check the block order Linear -> BatchNorm1d -> ReLU -> Dropout, once per size."""
    mlp = MLP(6, (4, 3), dropout=0.2)
    kinds = [type(layer) for layer in mlp.layers]

    block = [nn.Linear, nn.BatchNorm1d, nn.ReLU, MaskedDropout]
    assert kinds == block + block
    assert all(isinstance(layer, nn.Dropout) for layer in mlp.layers[3::4])
    assert mlp.output_dim == 3


def test_masked_dropout_drops_at_rate_p_and_rescales() -> None:
    """Check the drop rate against p and that kept values are scaled by 1 / (1 - p)."""
    torch.manual_seed(0)
    outputs = MaskedDropout(0.2)(torch.ones(1000, 1000))

    # 10^6 draws: the standard error of the rate is sqrt(0.2 * 0.8 / 10^6) = 0.0004.
    assert abs(float((outputs == 0).float().mean()) - 0.2) < 0.002
    assert set(torch.unique(outputs).tolist()) == {0.0, 1.25}


def test_masked_dropout_gradient_follows_the_mask() -> None:
    """Check that the gradient is the forward mask times 1 / (1 - p), element by element."""
    torch.manual_seed(0)
    inputs = torch.full((50, 40), 2.0, requires_grad=True)
    outputs = MaskedDropout(0.5)(inputs)
    outputs.sum().backward()

    kept = outputs.detach() != 0
    torch.testing.assert_close(inputs.grad, kept.float() * 2.0)
    torch.testing.assert_close(outputs.detach(), kept.float() * 4.0)


def test_masked_dropout_is_the_identity_in_eval_mode_and_seeded_in_training() -> None:
    """Check eval mode returns the input and the same seed draws the same mask."""
    layer = MaskedDropout(0.3)
    inputs = torch.randn(20, 10)
    torch.testing.assert_close(layer.eval()(inputs), inputs)

    layer.train()
    torch.manual_seed(5)
    first = layer(inputs)
    torch.manual_seed(5)
    torch.testing.assert_close(layer(inputs), first, rtol=0, atol=0)


def test_mlp_without_hidden_sizes_is_the_identity() -> None:
    """Check that an MLP with no hidden sizes returns its input unchanged."""
    mlp = MLP(5, (), dropout=0.2)
    inputs = torch.randn(3, 5)

    torch.testing.assert_close(mlp(inputs), inputs)
    assert mlp.output_dim == 5


def test_mlp_refuses_a_zero_size() -> None:
    """Check that a hidden size of 0 is refused with the sizes named."""
    with pytest.raises(ConfigError, match=r"got input 4 and hidden \(8, 0\)"):
        MLP(4, (8, 0))


def test_gate_is_the_softmax_of_a_bias_free_linear_map() -> None:
    """Check the gate against softmax(W x) computed by hand for one row."""
    gate = Gate(2, num_experts=2)
    with torch.no_grad():
        gate.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    weights = gate(torch.tensor([[0.0, torch.log(torch.tensor(3.0))]]))

    # Scores 0 and ln 3: softmax gives 1 / 4 and 3 / 4.
    torch.testing.assert_close(weights, torch.tensor([[0.25, 0.75]]))
    assert gate.linear.bias is None


def test_mix_experts_is_a_weighted_sum() -> None:
    """Check the mixture of two experts for two rows against sums worked by hand."""
    outputs = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]])
    weights = torch.tensor([[0.5, 0.5], [0.1, 0.9]])

    expected = torch.tensor([[2.0, 3.0], [0.9, 0.1]])
    torch.testing.assert_close(mix_experts(outputs, weights), expected)


def test_expert_group_stacks_independent_experts() -> None:
    """Check that expert k's slice of the group output is expert k's own output."""
    torch.manual_seed(0)
    group = ExpertGroup(4, num_experts=3, hidden=(5, 2), dropout=0.0).eval()
    inputs = torch.randn(6, 4)
    outputs = group(inputs)

    assert outputs.shape == (6, 3, 2) and len(group) == 3
    torch.testing.assert_close(outputs[:, 2], group.experts[2](inputs))
    assert not torch.allclose(outputs[:, 0], outputs[:, 1])


def test_tower_returns_one_logit_per_row() -> None:
    """Check that a tower maps [B, D] to [B] through its MLP and head."""
    torch.manual_seed(0)
    tower = Tower(4, (3,), dropout=0.0).eval()
    features = torch.randn(5, 4)

    logits = tower(features)
    assert logits.shape == (5,)
    torch.testing.assert_close(logits, tower.head(tower.body(features))[:, 0])

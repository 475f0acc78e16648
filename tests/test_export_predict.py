"""`taa predict` with exported models on the real AliExpress rows: same scores as PyTorch.

The real rows (A as source, B as the file to score) are prepared into a dataset, a tiny
MMoE is pretrained on A and exported to ONNX and TorchScript; `taa predict` then scores
B's test rows, with some category values replaced by values no vocabulary has seen, with
the checkpoint and with each export.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from taa.data.prepare import PrepareConfig, prepare_dataset
from taa.data.schema import Schema
from taa.errors import SchemaMismatchError, UndefinedMetricWarning
from taa.export import export_model
from taa.models.base import ModelConfig
from taa.train import PredictConfig, PretrainConfig, load_checkpoint, predict, pretrain

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "aliexpress-real"
TINY = ModelConfig(
    embedding_dim=4, expert_hidden=(8,), tower_hidden=(4,), dropout=0.1, num_experts=2
)
TOLERANCE = 1e-5
COLUMNS = ("click_probability", "conversion_probability")

pytestmark = pytest.mark.skipif(
    not (REAL / "B" / "test.csv").is_file(), reason=f"real rows not found at {REAL}"
)


def _with_unseen(source: Path, out: Path, value: int) -> Path:
    """B's test rows with categorical_5 and categorical_7 set to ``value`` on even rows."""
    table = pacsv.read_csv(source)
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    for name in ("categorical_5", "categorical_7"):
        changed = columns[name].copy()
        changed[::2] = value
        columns[name] = changed
    import pyarrow as pa

    pacsv.write_csv(pa.table(columns), out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    dataset = root / "dataset"
    prepare_dataset(
        PrepareConfig(out=dataset, domains=(f"A={REAL / 'A'}", f"B={REAL / 'B'}"), quiet=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = pretrain(
            PretrainConfig(
                dataset=dataset, domain="A", model="mmoe", model_config=TINY, epochs=1,
                batch_size=256, lr=0.01, threads=1, quiet=True, run_dir=root / "run",
            )
        )  # fmt: skip
    model, _ = load_checkpoint(result.best_checkpoint)
    schema = Schema.load(dataset)
    paths = {"dataset": dataset, "checkpoint": result.best_checkpoint}
    paths["onnx"] = export_model(
        model, "mmoe", schema, root / "m.onnx", onnx_exporter="legacy"
    ).path
    paths["torchscript"] = export_model(
        model, "mmoe", schema, root / "m.pt", format="torchscript"
    ).path
    paths["unseen_777"] = _with_unseen(REAL / "B" / "test.csv", root / "b777.csv", 777)
    paths["unseen_888"] = _with_unseen(REAL / "B" / "test.csv", root / "b888.csv", 888)
    return paths


def _scores(served: dict[str, Path], model: str, rows: str, tmp_path: Path) -> np.ndarray:
    output = tmp_path / f"{model}-{rows}.parquet"
    predict(
        PredictConfig(
            model=served[model], dataset=served["dataset"], input=served[rows], output=output
        )
    )
    table = pq.read_table(output)
    return np.stack([table.column(name).to_numpy() for name in COLUMNS], axis=1)


@pytest.mark.parametrize("exported", ["onnx", "torchscript"])
def test_predict_with_an_export_matches_the_checkpoint(
    served: dict[str, Path], exported: str, tmp_path: Path
) -> None:
    """Check that predict through onnxruntime / torch.jit equals PyTorch within 1e-5."""
    reference = _scores(served, "checkpoint", "unseen_777", tmp_path)
    scores = _scores(served, exported, "unseen_777", tmp_path)
    assert scores.shape == (20, 2)
    np.testing.assert_allclose(scores, reference, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("exported", ["onnx", "torchscript"])
def test_unseen_category_values_score_as_oov(
    served: dict[str, Path], exported: str, tmp_path: Path
) -> None:
    """Check that two different unseen raw values give the same scores (both map to index 0)."""
    first = _scores(served, exported, "unseen_777", tmp_path)
    second = _scores(served, exported, "unseen_888", tmp_path)
    np.testing.assert_allclose(first, second, atol=TOLERANCE, rtol=0)


def test_predict_refuses_an_export_for_another_dataset(
    served: dict[str, Path], tmp_path: Path
) -> None:
    """Check that an exported model refuses a dataset with another vocabulary."""
    other = tmp_path / "a-only"
    prepare_dataset(PrepareConfig(out=other, domains=(f"A={REAL / 'A'}",), quiet=True))
    config = PredictConfig(
        model=served["onnx"],
        dataset=other,
        input=served["unseen_777"],
        output=tmp_path / "scores.csv",
    )
    with pytest.raises(SchemaMismatchError, match=r"was trained on schema [0-9a-f]{16} but"):
        predict(config)

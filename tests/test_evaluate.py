"""``evaluate``: whole-split metrics of a checkpoint, undefined metrics, schema checks."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from taa.data.batches import TensorSplit, load_split
from taa.errors import SchemaMismatchError, UndefinedMetricWarning
from taa.models.base import build_model
from taa.train import EvaluateConfig, evaluate, evaluate_model, roc_auc, save_checkpoint
from taa.train.evaluate import collect_outputs
from test_train_support import TINY_MODEL, make_dataset, make_rows, tiny_schema, write_split


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    dataset = make_dataset(root / "data", source_rows=40, target_rows=40)
    torch.manual_seed(0)
    model = build_model("mmoe", tiny_schema(), TINY_MODEL)
    path = save_checkpoint(root / "model.pt", model, "mmoe", tiny_schema().digest(), {"a": 1})
    return dataset, path


def test_evaluate_reports_whole_split_metrics(checkpoint: tuple[Path, Path]) -> None:
    """Check that evaluate's AUC equals the AUC of all predictions of the split at once."""
    dataset, path = checkpoint
    result = evaluate(EvaluateConfig(checkpoint=path, dataset=dataset, domain="T", batch_size=7))
    from taa.train import load_checkpoint

    model, _ = load_checkpoint(path)
    split = load_split(dataset, "T", "test")
    probabilities, _ = collect_outputs(model, split, device=torch.device("cpu"), batch_size=200)
    expected = roc_auc(split.labels[:, 0].numpy(), probabilities[:, 0])
    assert result["tasks"]["click"]["auc"] == pytest.approx(expected, abs=1e-12)
    assert result["tasks"]["click"]["rows"] == 200
    assert result["tasks"]["click"]["positives"] == int(split.labels[:, 0].sum())


def test_auc_is_not_a_mean_over_batches(checkpoint: tuple[Path, Path]) -> None:
    """Check that batching does not change the AUC, though batch-averaged AUC would differ."""
    dataset, path = checkpoint
    small = evaluate(EvaluateConfig(checkpoint=path, dataset=dataset, domain="T", batch_size=9))
    large = evaluate(EvaluateConfig(checkpoint=path, dataset=dataset, domain="T", batch_size=512))
    for task in ("click", "conversion"):
        assert small["tasks"][task]["auc"] == large["tasks"][task]["auc"]
        assert small["tasks"][task]["gauc"] == large["tasks"][task]["gauc"]
        # float32 matrix products round differently with the batch shape
        assert small["tasks"][task]["logloss"] == pytest.approx(large["tasks"][task]["logloss"])
    from taa.train import load_checkpoint

    model, _ = load_checkpoint(path)
    split = load_split(dataset, "T", "test")
    probabilities, _ = collect_outputs(model, split, device=torch.device("cpu"))
    labels = split.labels[:, 0].numpy()
    chunks = [
        roc_auc(labels[start : start + 9], probabilities[start : start + 9, 0])
        for start in range(0, 200, 9)
    ]
    chunk_mean = float(np.nanmean(chunks))
    assert abs(chunk_mean - large["tasks"]["click"]["auc"]) > 1e-6


def test_evaluate_writes_the_output_file(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    """Check that --output holds the returned metrics as JSON."""
    dataset, path = checkpoint
    output = tmp_path / "metrics.json"
    result = evaluate(
        EvaluateConfig(checkpoint=path, dataset=dataset, domain="S", split="train", output=output)
    )
    assert json.loads(output.read_text()) == json.loads(json.dumps(result))


def test_one_class_task_gives_nan_and_a_warning(
    checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    """Check that a split without conversions gives NaN conversion AUC and a warning naming it."""
    dataset, path = checkpoint
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    rows = make_rows(30, 9)
    rows["conversion"][:] = 0
    write_split(copy / "T" / "test.parquet", rows)
    with pytest.warns(
        UndefinedMetricWarning, match=r"AUC of task 'conversion' is undefined on T/test"
    ):
        result = evaluate(EvaluateConfig(checkpoint=path, dataset=copy, domain="T"))
    assert math.isnan(result["tasks"]["conversion"]["auc"])
    assert math.isfinite(result["tasks"]["conversion"]["logloss"])
    assert math.isfinite(result["tasks"]["click"]["auc"])


def test_evaluate_refuses_a_schema_mismatch(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    """Check that a dataset with another vocabulary is refused, naming both digests and the fix."""
    dataset, path = checkpoint
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    other = tiny_schema(vocab=(7, 5, 4))
    other.save(copy)
    with pytest.raises(
        SchemaMismatchError,
        match=rf"trained on schema {tiny_schema().digest()} but dataset .* has schema "
        rf"{other.digest()}; use the dataset the model was trained on",
    ):
        evaluate(EvaluateConfig(checkpoint=path, dataset=copy, domain="T"))


def test_evaluation_runs_in_inference_mode() -> None:
    """Check that collected outputs carry no autograd history (inference_mode)."""
    torch.manual_seed(0)
    model = build_model("mmoe", tiny_schema(), TINY_MODEL)
    split = TensorSplit.from_arrays(make_rows(10, 0), tiny_schema())
    _, features = collect_outputs(model, split, device=torch.device("cpu"), with_features=True)
    assert features is not None
    assert all(feature.is_inference() for feature in features)


def test_evaluate_model_restores_nothing_it_should_not(checkpoint: tuple[Path, Path]) -> None:
    """Check that evaluating twice gives identical metrics (eval mode, no state change)."""
    torch.manual_seed(0)
    model = build_model("mmoe", tiny_schema(), TINY_MODEL)
    split = TensorSplit.from_arrays(make_rows(50, 0), tiny_schema())
    first = evaluate_model(model, split, ("click", "conversion"), device=torch.device("cpu"))
    second = evaluate_model(model, split, ("click", "conversion"), device=torch.device("cpu"))
    assert first == second


def test_selection_score_weights_tasks_by_their_smaller_class() -> None:
    """Check that a task with one positive barely moves the epoch's score."""
    from taa.train.evaluate import selection_score

    valid = {
        "click": {"auc": 0.7, "logloss": 0.1, "rows": 100, "positives": 30},
        "conversion": {"auc": 0.2, "logloss": 0.1, "rows": 100, "positives": 1},
    }
    # Weights min(30, 70) = 30 and min(1, 99) = 1: (0.7 * 30 + 0.2 * 1) / 31.
    assert selection_score(valid) == pytest.approx((0.7 * 30 + 0.2) / 31, abs=1e-12)


def test_selection_score_skips_undefined_aucs_and_falls_back_to_log_loss() -> None:
    """Check that NaN AUCs are left out, and minus the mean log-loss is used without any."""
    from taa.train.evaluate import selection_score

    one_defined = {
        "click": {"auc": 0.6, "logloss": 0.3, "rows": 10, "positives": 5},
        "conversion": {"auc": float("nan"), "logloss": 0.1, "rows": 10, "positives": 0},
    }
    none_defined = {
        "click": {"auc": float("nan"), "logloss": 0.3, "rows": 10, "positives": 0},
        "conversion": {"auc": float("nan"), "logloss": 0.1, "rows": 10, "positives": 0},
    }
    assert selection_score(one_defined) == pytest.approx(0.6)
    assert selection_score(none_defined) == pytest.approx(-0.2)

"""End to end on the real AliExpress rows: prepare A and B, sample B, pretrain on A, adapt to B
with every method, for every model; evaluate. Tiny sizes and one epoch keep it fast.

``B/test.csv`` holds no conversion, so the CTCVR ("conversion") AUC on it must be NaN with
an :class:`~taa.errors.UndefinedMetricWarning`, never a number or a crash.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

from taa.data.prepare import PrepareConfig, prepare_dataset
from taa.data.sample import draw_sample
from taa.errors import UndefinedMetricWarning
from taa.models import available_models
from taa.models.base import ModelConfig
from taa.train import AdaptConfig, EvaluateConfig, PretrainConfig, adapt, evaluate, pretrain
from taa.train.config import METHODS

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "aliexpress-real"
TINY = ModelConfig(
    embedding_dim=4,
    expert_hidden=(8,),
    tower_hidden=(4,),
    dropout=0.1,
    num_experts=2,
    ple_shared_experts=1,
    ple_task_experts=1,
    ple_levels=1,
)
B_TEST_ROWS, B_TEST_CLICKS = 20, 10
# Group AUC needs a search page holding both classes. In A no page mixes converting and
# other rows; in B (clicks sorted first) no page mixes clicked and other rows at all.

pytestmark = pytest.mark.skipif(
    not (REAL / "A" / "train.csv").is_file(), reason=f"real rows not found at {REAL}"
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("real") / "dataset"
    prepare_dataset(
        PrepareConfig(out=out, domains=(f"A={REAL / 'A'}", f"B={REAL / 'B'}"), quiet=True)
    )
    info = draw_sample(out, "B", fraction=0.5, seed=0, valid_fraction=0.3)
    return out, info.name


@pytest.fixture(scope="module")
def source_models(
    dataset: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """One pretrained source checkpoint per model, made on first use."""
    return {}


def source_checkpoint(
    model: str, dataset: tuple[Path, str], cache: dict[str, Path], root: Path
) -> Path:
    if model not in cache:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            result = pretrain(
                PretrainConfig(
                    dataset=dataset[0], domain="A", model=model, model_config=TINY, epochs=1,
                    batch_size=256, lr=0.01, threads=1, quiet=True,
                    run_dir=root / f"pretrain-{model}",
                )
            )  # fmt: skip
        cache[model] = result.best_checkpoint
    return cache[model]


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


def test_every_model_is_covered() -> None:
    """Check that the registry lists the paper's models, so the grid below is not empty."""
    assert {"mmoe", "ple", "aitm"} <= set(available_models())


@pytest.mark.parametrize("model", available_models())
def test_pretrain_on_real_rows_gives_finite_metrics(
    model: str, dataset: tuple[Path, str], source_models: dict[str, Path], runs_root: Path
) -> None:
    """Check that pretraining each model on A gives finite test AUC and log-loss on A for
    both tasks, finite click group AUC, and NaN conversion group AUC (no mixed page).
    """
    checkpoint = source_checkpoint(model, dataset, source_models, runs_root)
    with pytest.warns(UndefinedMetricWarning, match="group AUC of task 'conversion'"):
        final = evaluate(EvaluateConfig(checkpoint=checkpoint, dataset=dataset[0], domain="A"))
    for task, values in final["tasks"].items():
        assert values["rows"] == 1000
        assert math.isfinite(values["auc"]), task
        assert math.isfinite(values["logloss"]), task
    assert math.isfinite(final["tasks"]["click"]["gauc"])
    assert math.isnan(final["tasks"]["conversion"]["gauc"])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", available_models())
def test_adapt_to_real_b_reports_nan_only_for_the_missing_class(
    model: str,
    method: str,
    dataset: tuple[Path, str],
    source_models: dict[str, Path],
    runs_root: Path,
) -> None:
    """Check every model x method on A -> B: finite click AUC and log-loss, and a NaN
    conversion AUC with a warning naming the task, because B/test has no conversion.
    """
    path, sample = dataset
    checkpoint = source_checkpoint(model, dataset, source_models, runs_root)
    options: dict[str, object] = {"source_checkpoint": checkpoint}
    if method == "target-only":
        options = {"model": model, "model_config": TINY}
    config = AdaptConfig(
        dataset=path, target="B", sample=sample, method=method, epochs=1, batch_size=64,
        lr=0.01, critic_steps=2, critic_hidden=(8,), threads=1, quiet=True,
        run_dir=runs_root / f"{model}-{method}", **options,
    )  # fmt: skip
    with pytest.warns(UndefinedMetricWarning, match="AUC of task 'conversion' is undefined on B"):
        result = adapt(config)
    click = result.final_metrics["tasks"]["click"]
    conversion = result.final_metrics["tasks"]["conversion"]
    assert (click["rows"], click["positives"]) == (B_TEST_ROWS, B_TEST_CLICKS)
    assert math.isfinite(click["auc"])
    assert math.isfinite(click["logloss"])
    assert math.isnan(click["gauc"])
    assert conversion["positives"] == 0
    assert math.isnan(conversion["auc"])
    assert math.isnan(conversion["gauc"])
    assert math.isfinite(conversion["logloss"])
    assert result.final_metrics["method"] == method


def test_evaluate_real_b_test_warns_for_conversion(
    dataset: tuple[Path, str], source_models: dict[str, Path], runs_root: Path
) -> None:
    """Check that taa evaluate on B/test gives NaN conversion AUC with the warning."""
    checkpoint = source_checkpoint("mmoe", dataset, source_models, runs_root)
    with pytest.warns(UndefinedMetricWarning, match="AUC of task 'conversion' is undefined"):
        result = evaluate(EvaluateConfig(checkpoint=checkpoint, dataset=dataset[0], domain="B"))
    assert math.isnan(result["tasks"]["conversion"]["auc"])
    assert math.isfinite(result["tasks"]["click"]["auc"])


def test_predict_scores_the_raw_b_test_file_like_the_prepared_split(
    dataset: tuple[Path, str], source_models: dict[str, Path], runs_root: Path, tmp_path: Path
) -> None:
    """Check that taa predict on the raw B/test.csv gives, row for row, the probabilities of
    the prepared B/test split (same vocabulary, same order).
    """
    import numpy as np
    import pyarrow.csv as pacsv
    import torch

    from taa.data.batches import load_split
    from taa.train import PredictConfig, load_checkpoint, predict
    from taa.train.evaluate import collect_outputs

    checkpoint = source_checkpoint("mmoe", dataset, source_models, runs_root)
    output = predict(
        PredictConfig(
            model=checkpoint, dataset=dataset[0], input=REAL / "B" / "test.csv",
            output=tmp_path / "scores.csv",
        )
    )  # fmt: skip
    table = pacsv.read_csv(output)
    assert table.num_rows == B_TEST_ROWS
    model, _ = load_checkpoint(checkpoint)
    split = load_split(dataset[0], "B", "test")
    expected, _ = collect_outputs(model, split, device=torch.device("cpu"))
    for index, task in enumerate(("click", "conversion")):
        values = np.asarray(table.column(f"{task}_probability").to_pylist())
        np.testing.assert_allclose(values, expected[:, index], rtol=1e-5, atol=1e-7)

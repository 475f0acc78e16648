"""Training from streamed Parquet (``--streaming``): pretrain and adapt."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from taa.errors import ConfigError
from taa.train import AdaptConfig, PretrainConfig, adapt, pretrain
from test_distributed_support import BIAS_FREE, bias_free_registered
from test_train_support import TINY_MODEL, make_dataset

FULL_BATCH = 4096


@pytest.fixture(scope="module", autouse=True)
def _bias_free_model() -> Iterator[None]:
    """Register the test-only bias-free MMoE for this module's tests only."""
    with bias_free_registered():
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("streaming") / "data", source_rows=400)


def _pretrain(dataset: Path, run_dir: Path, **options: object) -> PretrainConfig:
    values: dict[str, object] = {
        "dataset": dataset,
        "domain": "S",
        "model": BIAS_FREE,
        "model_config": TINY_MODEL,
        "epochs": 2,
        "batch_size": FULL_BATCH,
        "lr": 0.05,
        "threads": 1,
        "quiet": True,
        "run_dir": run_dir,
    }
    values.update(options)
    return PretrainConfig(**values)  # type: ignore[arg-type]


def _adapt(dataset: Path, checkpoint: Path, run_dir: Path, **options: object) -> AdaptConfig:
    values: dict[str, object] = {
        "dataset": dataset,
        "target": "T",
        "sample": "s0",
        "method": "taa",
        "source_checkpoint": checkpoint,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.01,
        "threads": 1,
        "quiet": True,
        "run_dir": run_dir,
        "patience": 5,
        "streaming": True,
        "shuffle_buffer": 48,
    }
    values.update(options)
    return AdaptConfig(**values)  # type: ignore[arg-type]


def _tasks_close(first: dict, second: dict, tolerance: float) -> None:
    for task, values in first.items():
        for metric in ("auc", "logloss"):
            assert abs(values[metric] - second[task][metric]) <= tolerance, (task, metric)


def test_full_batch_streaming_pretrain_matches_loading_whole(dataset: Path, tmp_path: Path) -> None:
    """Check that a streamed full-batch run validates on the same rows and ends as a loaded one."""
    loaded = pretrain(_pretrain(dataset, tmp_path / "loaded"))
    streamed = pretrain(_pretrain(dataset, tmp_path / "streamed", streaming=True))
    _tasks_close(streamed.final_metrics["tasks"], loaded.final_metrics["tasks"], 1e-6)
    loaded_valid, streamed_valid = (
        [json.loads(line)["valid"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (loaded.run_dir, streamed.run_dir)
    )
    assert [item["click"]["rows"] for item in streamed_valid] == [
        item["click"]["rows"] for item in loaded_valid
    ]
    for first, second in zip(streamed_valid, loaded_valid, strict=True):
        _tasks_close(first, second, 1e-6)


def test_mini_batch_streaming_pretrain_trains(dataset: Path, tmp_path: Path) -> None:
    """Check that streamed mini-batches with a small shuffle buffer give defined metrics."""
    result = pretrain(
        _pretrain(dataset, tmp_path / "run", streaming=True, batch_size=32, shuffle_buffer=64)
    )
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    for values in result.final_metrics["tasks"].values():
        assert math.isfinite(values["auc"]) and values["rows"] == 200


@pytest.fixture(scope="module")
def source_checkpoint(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    return pretrain(_pretrain(dataset, root / "run", model="mmoe", epochs=1)).best_checkpoint


def test_streaming_adaptation_resumes_on_the_same_source_rows(
    dataset: Path, source_checkpoint: Path, tmp_path: Path
) -> None:
    """Check that an interrupted streamed TAA run resumed to epoch 2 equals an uninterrupted one."""
    whole = adapt(_adapt(dataset, source_checkpoint, tmp_path / "whole"))
    adapt(_adapt(dataset, source_checkpoint, tmp_path / "parts", epochs=1))
    resumed = adapt(_adapt(dataset, source_checkpoint, tmp_path / "parts", resume=True))
    assert resumed.final_metrics["tasks"] == whole.final_metrics["tasks"]
    first = (whole.run_dir / "metrics.jsonl").read_text().splitlines()
    second = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["train"] for line in first] == [
        json.loads(line)["train"] for line in second
    ]


def test_streaming_is_refused_without_source_rows(dataset: Path, source_checkpoint: Path) -> None:
    """Check that --streaming with a method that draws no source rows is refused."""
    with pytest.raises(ConfigError, match=r"--streaming got True; allowed: only with methods"):
        _adapt(dataset, source_checkpoint, Path("unused"), method="finetune")

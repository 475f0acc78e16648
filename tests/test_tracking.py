"""Tests of optional metric tracking (taa.tracking)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from taa.errors import ConfigError
from taa.tracking import NullTracker, flatten_metrics, make_tracker


def _read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard", reason="the optional extra taa[tracking] is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_flatten_metrics_names_nested_values_by_path() -> None:
    """Check that a metrics.jsonl record flattens to slash-separated names, epoch left out."""
    record = {
        "epoch": 3,
        "seconds": 1.5,
        "train": {"loss": 0.25, "task_loss": {"click": 0.1, "conversion": 0.15}},
        "valid": {"click": {"auc": 0.75, "logloss": 0.2}},
        "method": "taa",
    }
    assert flatten_metrics(record) == {
        "seconds": 1.5,
        "train/loss": 0.25,
        "train/task_loss/click": 0.1,
        "train/task_loss/conversion": 0.15,
        "valid/click/auc": 0.75,
        "valid/click/logloss": 0.2,
    }


def test_flatten_metrics_keeps_nan_and_drops_infinity() -> None:
    """Check that an undefined (NaN) metric is kept while an infinite one is dropped."""
    flat = flatten_metrics({"valid": {"conversion": {"auc": math.nan, "logloss": math.inf}}})
    assert list(flat) == ["valid/conversion/auc"]
    assert math.isnan(flat["valid/conversion/auc"])


def test_none_tracker_writes_nothing(tmp_path: Path) -> None:
    """Check that --track none records nothing and creates no folder."""
    tracker = make_tracker("none", tmp_path)
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    tracker.close()
    assert isinstance(tracker, NullTracker)
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_tracker_is_null_on_other_ranks(tmp_path: Path) -> None:
    """Check that a rank other than 0 (enabled=False) gets a tracker that writes nothing."""
    tracker = make_tracker("tensorboard", tmp_path, enabled=False)
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    assert isinstance(tracker, NullTracker)
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_event_file_reads_back(tmp_path: Path) -> None:
    """Check that scalars logged per epoch are read back from the event file with their steps."""
    pytest.importorskip("tensorboard", reason="the optional extra taa[tracking] is not installed")
    tracker = make_tracker("tensorboard", tmp_path)
    tracker.log_params({"method": "taa", "lr": 0.001})
    for epoch, loss in [(1, 0.5), (2, 0.25)]:
        record = {"epoch": epoch, "train": {"loss": loss}, "valid": {"click": {"auc": 0.6 + epoch}}}
        tracker.log_metrics(flatten_metrics(record), step=epoch)
    tracker.close()

    scalars = _read_scalars(tmp_path / "tensorboard")
    assert sorted(scalars) == ["train/loss", "valid/click/auc"]
    assert scalars["train/loss"] == [(1, 0.5), (2, 0.25)]
    assert [step for step, _ in scalars["valid/click/auc"]] == [1, 2]
    assert scalars["valid/click/auc"][1][1] == pytest.approx(2.6)


def test_unknown_tracker_is_refused(tmp_path: Path) -> None:
    """Check that --track mlflow is refused with the supported choices named."""
    with pytest.raises(ConfigError, match=r"--track got 'mlflow'; choose one of \['none', 'tens"):
        make_tracker("mlflow", tmp_path)


def test_missing_tensorboard_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that --track tensorboard without the package says which extra to install."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'taa\[tracking\]'\` or use --track none"):
        make_tracker("tensorboard", tmp_path)

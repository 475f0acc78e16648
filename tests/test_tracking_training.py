"""--track tensorboard from a real (tiny) pretraining run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taa.errors import ConfigError
from taa.train import PretrainConfig, pretrain
from test_train_support import TINY_MODEL, make_dataset


def _config(tmp_path: Path, **options: object) -> PretrainConfig:
    values: dict[str, object] = {
        "dataset": make_dataset(tmp_path / "data", source_rows=200),
        "domain": "S",
        "model": "mmoe",
        "model_config": TINY_MODEL,
        "epochs": 2,
        "batch_size": 64,
        "threads": 1,
        "quiet": True,
        "run_dir": tmp_path / "run",
    }
    values.update(options)
    return PretrainConfig(**values)  # type: ignore[arg-type]


def test_pretrain_tracks_each_epoch_to_tensorboard(tmp_path: Path) -> None:
    """Check that the event file holds metrics.jsonl's losses and AUCs, one step per epoch."""
    pytest.importorskip("tensorboard", reason="the optional extra taa[tracking] is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = pretrain(_config(tmp_path, track="tensorboard"))
    accumulator = EventAccumulator(str(result.run_dir / "tensorboard"))
    accumulator.Reload()
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    events = accumulator.Scalars("train/loss")
    assert [event.step for event in events] == [item["epoch"] for item in history] == [1, 2]
    assert [event.value for event in events] == pytest.approx(
        [item["train"]["loss"] for item in history]
    )
    aucs = [event.value for event in accumulator.Scalars("valid/click/auc")]
    assert aucs == pytest.approx([item["valid"]["click"]["auc"] for item in history])
    assert "config/text_summary" in accumulator.Tags()["tensors"]


def test_pretrain_without_tracking_writes_no_event_files(tmp_path: Path) -> None:
    """Check that the default (--track none) leaves no tensorboard folder in the run."""
    result = pretrain(_config(tmp_path, epochs=1))
    assert not (result.run_dir / "tensorboard").exists()


def test_unknown_track_option_is_refused(tmp_path: Path) -> None:
    """Check that --track mlflow is refused by the trainer's config with the choices."""
    with pytest.raises(ConfigError, match=r"--track got 'mlflow'; allowed: one of \['none', 'ten"):
        PretrainConfig(dataset=tmp_path, domain="S", track="mlflow")

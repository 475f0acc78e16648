"""Resuming interrupted runs reaches exactly the metrics of an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taa.errors import ConfigError
from taa.train import AdaptConfig, PretrainConfig, adapt, pretrain
from taa.train.steps import TaaStep
from test_train_support import TINY_MODEL, make_dataset


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    dataset = make_dataset(root / "data", source_rows=240, sample_rows=48, valid_rows=40)
    result = pretrain(
        PretrainConfig(
            dataset=dataset,
            domain="S",
            model="mmoe",
            model_config=TINY_MODEL,
            epochs=1,
            batch_size=32,
            lr=0.02,
            threads=1,
            quiet=True,
            run_dir=root / "source",
        )
    )
    return dataset, result.best_checkpoint


def taa_config(dataset: Path, checkpoint: Path, run_dir: Path, **options: object) -> AdaptConfig:
    values: dict[str, object] = {
        "dataset": dataset,
        "target": "T",
        "sample": "s0",
        "method": "taa",
        "source_checkpoint": checkpoint,
        "epochs": 4,
        "patience": 10,
        "batch_size": 16,
        "lr": 0.01,
        "critic_steps": 2,
        "critic_hidden": (8,),
        "threads": 1,
        "quiet": True,
        "run_dir": run_dir,
    }
    values.update(options)
    return AdaptConfig(**values)  # type: ignore[arg-type]


def history_without_time(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("seconds")
    return records


@pytest.fixture(scope="module")
def uninterrupted(source: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    dataset, checkpoint = source
    run_dir = tmp_path_factory.mktemp("whole") / "run"
    adapt(taa_config(dataset, checkpoint, run_dir))
    return run_dir


def test_resume_after_max_epochs_matches_an_uninterrupted_run(
    source: tuple[Path, Path], uninterrupted: Path, tmp_path: Path
) -> None:
    """Check that 2 epochs, then --resume to 4, equal 4 epochs at once (metrics and history)."""
    dataset, checkpoint = source
    run_dir = tmp_path / "run"
    adapt(taa_config(dataset, checkpoint, run_dir, epochs=2))
    resumed = adapt(taa_config(dataset, checkpoint, run_dir, epochs=4, resume=True))
    whole = json.loads((uninterrupted / "final_metrics.json").read_text())
    assert resumed.final_metrics["epochs_run"] == 4
    assert resumed.final_metrics["tasks"] == whole["tasks"]
    assert history_without_time(run_dir) == history_without_time(uninterrupted)


def test_resume_after_a_crash_mid_epoch_matches_an_uninterrupted_run(
    source: tuple[Path, Path],
    uninterrupted: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that a run killed inside epoch 3 resumes from the end of epoch 2 and ends equal.

    The sample has 48 rows and batches of 16, so epoch 3 starts at step 7; the crash hits
    step 8.
    """
    dataset, checkpoint = source
    run_dir = tmp_path / "run"
    original = TaaStep.__call__
    calls = {"count": 0}

    def crashing_step(self: TaaStep, *indices: object) -> dict:
        calls["count"] += 1
        if calls["count"] == 8:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *indices)

    monkeypatch.setattr(TaaStep, "__call__", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        adapt(taa_config(dataset, checkpoint, run_dir))
    monkeypatch.setattr(TaaStep, "__call__", original)
    assert not (run_dir / "final_metrics.json").exists()
    assert [record["epoch"] for record in history_without_time(run_dir)] == [0, 1, 2]

    resumed = adapt(taa_config(dataset, checkpoint, run_dir, resume=True))
    whole = json.loads((uninterrupted / "final_metrics.json").read_text())
    assert resumed.final_metrics["tasks"] == whole["tasks"]
    assert history_without_time(run_dir) == history_without_time(uninterrupted)


def test_resume_with_other_settings_is_refused(
    source: tuple[Path, Path], uninterrupted: Path
) -> None:
    """Check that resuming with another learning rate names the changed setting."""
    dataset, checkpoint = source
    with pytest.raises(ConfigError, match=r"other settings \(lr: stored 0.01, now 0.5\)"):
        adapt(taa_config(dataset, checkpoint, uninterrupted, lr=0.5, resume=True))


def test_resume_without_a_training_state_is_refused(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    """Check that --resume on a folder without last.pt says there is nothing to resume."""
    dataset, checkpoint = source
    with pytest.raises(ConfigError, match=r"last.pt does not exist, so there is nothing"):
        adapt(taa_config(dataset, checkpoint, tmp_path / "empty", resume=True))

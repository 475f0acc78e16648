"""The ``pretrain``, ``adapt`` and ``evaluate`` commands: options reach the library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taa.cli.main import main
from test_train_support import make_dataset

TINY = [
    "--model-embedding-dim", "4",
    "--model-expert-hidden", "8",
    "--model-tower-hidden", "4",
    "--model-num-experts", "2",
    "--model-dropout", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cli")
    dataset = make_dataset(root / "data", source_rows=120)
    run_dir = root / "source"
    main(
        [
            "-q", "pretrain", "--dataset", str(dataset), "--domain", "S", "--epochs", "1",
            "--batch-size", "32", "--threads", "1", "--run-dir", str(run_dir), *TINY,
        ]
    )  # fmt: skip
    return dataset, run_dir


def test_pretrain_command_uses_the_model_options(pretrained: tuple[Path, Path]) -> None:
    """Check that --model-* options and --epochs reach the run's config.json."""
    _, run_dir = pretrained
    record = json.loads((run_dir / "config.json").read_text())
    assert record["model"] == "mmoe"
    assert record["model_config"]["expert_hidden"] == [8]
    assert record["model_config"]["embedding_dim"] == 4
    assert record["config"]["epochs"] == 1
    assert record["config"]["quiet"] is True


def test_adapt_command_runs_taa_and_prints_the_final_metrics(
    pretrained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that taa adapt trains with the given critic options and prints the metrics."""
    dataset, source_dir = pretrained
    run_dir = tmp_path / "taa"
    main(
        [
            "-q", "adapt", "--dataset", str(dataset), "--target", "T", "--sample", "s0",
            "--source-checkpoint", str(source_dir / "checkpoints" / "best.pt"),
            "--epochs", "1", "--batch-size", "32", "--critic-steps", "2",
            "--critic-hidden", "8,4", "--threads", "1", "--run-dir", str(run_dir),
        ]
    )  # fmt: skip
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["critic_hidden"] == [8, 4]
    assert record["config"]["source"] == "S"
    output = capsys.readouterr().out
    assert "taa mmoe: best epoch" in output
    assert "click" in output and "AUC" in output


def test_adapt_command_refuses_model_sizes_with_a_checkpoint(
    pretrained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that an explicit --model-* option with a checkpoint exits 2 with the reason."""
    dataset, source_dir = pretrained
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "adapt", "--dataset", str(dataset), "--target", "T", "--sample", "s0",
                "--source-checkpoint", str(source_dir / "checkpoints" / "best.pt"),
                "--model-dropout", "0.5", "--run-dir", str(tmp_path / "run"),
            ]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "--model-* size options cannot change" in capsys.readouterr().err


def test_evaluate_command_prints_json(
    pretrained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that taa evaluate --json prints per-task metrics of the requested split."""
    dataset, source_dir = pretrained
    main(
        [
            "evaluate", "--checkpoint", str(source_dir / "checkpoints" / "best.pt"),
            "--dataset", str(dataset), "--domain", "T", "--split", "samples/s0/valid", "--json",
        ]
    )  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "samples/s0/valid"
    assert result["tasks"]["click"]["rows"] == 40


def test_bad_option_value_exits_with_the_message(
    pretrained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that --epochs 0 exits with code 2 and names the option and allowed range."""
    dataset, _ = pretrained
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--dataset", str(dataset), "--domain", "S", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert "--epochs got 0; allowed: an integer >= 1" in capsys.readouterr().err


def test_predict_layout_choices_are_the_readers_layouts() -> None:
    """Check that --layout of taa predict offers exactly the layouts the readers know."""
    from taa.data.readers import LAYOUTS
    from taa.train.config import INPUT_LAYOUTS

    assert INPUT_LAYOUTS == LAYOUTS

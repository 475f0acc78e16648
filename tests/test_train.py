"""Pretraining: run folders, checkpoints, reproducibility, validation split and option checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from taa.data.batches import TensorSplit
from taa.errors import ConfigError, DataError
from taa.train import PretrainConfig, RunResult, load_checkpoint, pretrain
from taa.train.pretrain import holdout_split
from test_train_support import TINY_MODEL, make_dataset, make_rows, tiny_schema


def tiny_pretrain(dataset: Path, run_dir: Path, **options: object) -> PretrainConfig:
    values: dict[str, object] = {
        "dataset": dataset,
        "domain": "S",
        "model": "mmoe",
        "model_config": TINY_MODEL,
        "epochs": 2,
        "batch_size": 32,
        "lr": 0.02,
        "threads": 1,
        "quiet": True,
        "run_dir": run_dir,
    }
    values.update(options)
    return PretrainConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RunResult]:
    root = tmp_path_factory.mktemp("pretrain")
    dataset = make_dataset(root / "data")
    return dataset, pretrain(tiny_pretrain(dataset, root / "run"))


def test_pretrain_writes_a_complete_run_folder(pretrained: tuple[Path, RunResult]) -> None:
    """Check that a run folder holds config, schema, history, final metrics and checkpoints."""
    _, result = pretrained
    names = {path.relative_to(result.run_dir).as_posix() for path in result.run_dir.rglob("*")}
    assert {
        "config.json",
        "schema.json",
        "metrics.jsonl",
        "final_metrics.json",
        "checkpoints/best.pt",
        "checkpoints/best.json",
        "checkpoints/last.pt",
    } <= names
    assert not [name for name in names if name.endswith(".tmp")]


def test_pretrain_history_has_one_record_per_epoch(pretrained: tuple[Path, RunResult]) -> None:
    """Check metrics.jsonl: one line per epoch with train losses and validation metrics."""
    _, result = pretrained
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [record["epoch"] for record in records] == [1, 2]
    for record in records:
        assert set(record) == {"epoch", "seconds", "train", "valid"}
        assert set(record["train"]["task_loss"]) == {"click", "conversion"}
        assert math.isfinite(record["train"]["loss"])
        assert set(record["valid"]["click"]) >= {"auc", "logloss", "gauc"}


def test_pretrain_final_metrics_describe_the_run(pretrained: tuple[Path, RunResult]) -> None:
    """Check final_metrics.json: method, model, domain, split, epochs and per-task metrics."""
    _, result = pretrained
    final = json.loads((result.run_dir / "final_metrics.json").read_text())
    assert final == result.final_metrics
    assert (final["method"], final["model"], final["domain"], final["split"]) == (
        "pretrain",
        "mmoe",
        "S",
        "test",
    )
    assert final["epochs_run"] == 2
    assert final["best_epoch"] in (1, 2)
    assert final["tasks"]["click"]["rows"] == 200
    assert 0.0 <= final["tasks"]["click"]["auc"] <= 1.0


def test_pretrain_learns_the_source_task(pretrained: tuple[Path, RunResult]) -> None:
    """Check that two epochs lift the source test click AUC clearly above chance (0.5)."""
    _, result = pretrained
    assert result.final_metrics["tasks"]["click"]["auc"] > 0.65


def test_config_json_records_model_schema_and_version(pretrained: tuple[Path, RunResult]) -> None:
    """Check that config.json holds the resolved config, model sizes, schema digest, version."""
    _, result = pretrained
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["command"] == "pretrain"
    assert record["model"] == "mmoe"
    assert record["model_config"]["expert_hidden"] == [8]
    assert record["schema_digest"] == tiny_schema().digest()
    assert record["taa_version"]
    assert record["config"]["valid_fraction"] == 0.1


def test_checkpoint_loads_with_weights_only(pretrained: tuple[Path, RunResult]) -> None:
    """Check that best.pt and last.pt load with torch.load(weights_only=True)."""
    _, result = pretrained
    for name in ("best.pt", "last.pt"):
        payload = torch.load(result.run_dir / "checkpoints" / name, weights_only=True)
        assert isinstance(payload, dict)


def test_load_checkpoint_rebuilds_the_best_model(pretrained: tuple[Path, RunResult]) -> None:
    """Check that the loaded model reproduces the final test metrics exactly."""
    from taa.train import evaluate_model

    dataset, result = pretrained
    model, metadata = load_checkpoint(result.best_checkpoint)
    assert metadata["model_name"] == "mmoe"
    assert metadata["schema_digest"] == tiny_schema().digest()
    assert metadata["metadata"]["epoch"] == result.final_metrics["best_epoch"]
    from taa.data.batches import load_split

    split = load_split(dataset, "S", "test")
    metrics = evaluate_model(model, split, ("click", "conversion"), device=torch.device("cpu"))
    assert metrics["click"]["auc"] == result.final_metrics["tasks"]["click"]["auc"]


def test_load_checkpoint_refuses_a_training_state(pretrained: tuple[Path, RunResult]) -> None:
    """Check that last.pt (a training state) is refused by load_checkpoint with the fix."""
    _, result = pretrained
    with pytest.raises(DataError, match=r"not a training state \(last.pt\)"):
        load_checkpoint(result.run_dir / "checkpoints" / "last.pt")


def test_load_checkpoint_names_a_missing_file(tmp_path: Path) -> None:
    """Check that a missing checkpoint path is named with where checkpoints come from."""
    with pytest.raises(DataError, match=r"no such checkpoint.*taa pretrain"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_load_checkpoint_refuses_a_damaged_file(tmp_path: Path) -> None:
    """Check that a file of random bytes is refused as damaged, naming it and the fix."""
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(
        DataError, match=r"bad\.pt: not a taa checkpoint, or the file is damaged .*taa pretrain"
    ):
        load_checkpoint(path)


def test_load_checkpoint_never_suggests_unsafe_loading(tmp_path: Path) -> None:
    """Check that a pickle torch will not load safely gives our message, without torch's
    advice to load with weights_only=False."""
    import datetime

    path = tmp_path / "foreign.pt"
    torch.save({"when": datetime.datetime(2020, 1, 1)}, path)
    with pytest.raises(DataError, match=r"foreign\.pt: not a taa checkpoint") as error:
        load_checkpoint(path)
    assert "weights_only" not in str(error.value)


def test_same_seed_gives_the_same_metrics(
    pretrained: tuple[Path, RunResult], tmp_path: Path
) -> None:
    """Check that a second run with the same seed reproduces every final metric."""
    dataset, result = pretrained
    again = pretrain(tiny_pretrain(dataset, tmp_path / "again"))
    assert again.final_metrics["tasks"] == result.final_metrics["tasks"]


def test_existing_run_folder_is_refused(pretrained: tuple[Path, RunResult]) -> None:
    """Check that rerunning into a used folder asks for --resume or --overwrite."""
    dataset, result = pretrained
    with pytest.raises(ConfigError, match=r"already exists; pass --resume.*--overwrite"):
        pretrain(tiny_pretrain(dataset, result.run_dir))


def test_overwrite_starts_the_run_again(tmp_path: Path) -> None:
    """Check that --overwrite replaces an existing run folder's content."""
    dataset = make_dataset(tmp_path / "data", source_rows=60)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "stale.txt").write_text("old")
    pretrain(tiny_pretrain(dataset, run_dir, epochs=1, overwrite=True))
    assert not (run_dir / "stale.txt").exists()
    assert (run_dir / "final_metrics.json").is_file()


def test_task_weights_must_match_the_tasks(tmp_path: Path) -> None:
    """Check that --task-weights with the wrong count names both counts and the tasks."""
    dataset = make_dataset(tmp_path / "data", source_rows=60)
    with pytest.raises(
        ConfigError, match=r"got 3 weights .* for 2 tasks \['click', 'conversion'\]"
    ):
        pretrain(tiny_pretrain(dataset, tmp_path / "run", task_weights=(1.0, 1.0, 1.0)))
    assert not (tmp_path / "run").exists()


def test_unknown_eval_split_is_refused_before_training(tmp_path: Path) -> None:
    """Check that --eval-split naming no split is refused with the choices, before any
    training, leaving no run folder."""
    dataset = make_dataset(tmp_path / "data", source_rows=60)
    with pytest.raises(
        ConfigError, match=r"option --eval-split got 'nope', but domain 'S' has no such split"
    ):
        pretrain(tiny_pretrain(dataset, tmp_path / "run", eval_split="nope"))
    assert not (tmp_path / "run").exists()


def test_unknown_domain_is_refused(tmp_path: Path) -> None:
    """Check that a domain missing from the dataset is named with the choices."""
    dataset = make_dataset(tmp_path / "data", source_rows=60)
    with pytest.raises(DataError, match=r"domain 'X' is not in this dataset; choose one of"):
        pretrain(tiny_pretrain(dataset, tmp_path / "run", domain="X"))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("epochs", 0, r"--epochs got 0; allowed: an integer >= 1"),
        ("batch_size", 1, r"--batch-size got 1; allowed: an integer >= 2"),
        ("lr", -1.0, r"--lr got -1.0; allowed: a number > 0"),
        ("valid_fraction", 1.0, r"--valid-fraction got 1.0; allowed: a number strictly"),
        ("device", "tpu", r"--device got 'tpu'; allowed: one of"),
        ("precision", "fp16", r"--precision got 'fp16'; allowed: one of \['fp32', 'bf16'\]"),
        ("patience", 0, r"--patience got 0"),
    ],
)
def test_bad_options_are_refused(option: str, value: object, message: str) -> None:
    """Check that each out-of-range option is refused naming the option, value and range."""
    with pytest.raises(ConfigError, match=message):
        options = {option: value}
        PretrainConfig(dataset=Path("data"), domain="S", **options)  # type: ignore[arg-type]


def test_resume_and_overwrite_together_are_refused() -> None:
    """Check that --resume with --overwrite is refused."""
    with pytest.raises(ConfigError, match="--overwrite got True; allowed: not together"):
        PretrainConfig(dataset=Path("data"), domain="S", resume=True, overwrite=True)


def test_holdout_split_is_disjoint_covering_and_seeded() -> None:
    """Check that the validation split is a seeded, disjoint share of about 10 % of the rows.

    The first numerical column is continuous, so its values identify rows.
    """
    split = TensorSplit.from_arrays(make_rows(400, 0), tiny_schema())
    train, valid = holdout_split(split, 0.1, seed=3)
    _, again_valid = holdout_split(split, 0.1, seed=3)
    _, other_valid = holdout_split(split, 0.1, seed=4)
    train_ids = set(train.numerical[:, 0].tolist())
    valid_ids = set(valid.numerical[:, 0].tolist())
    assert 28 <= len(valid) <= 52
    assert not train_ids & valid_ids
    assert train_ids | valid_ids == set(split.numerical[:, 0].tolist())
    assert torch.equal(valid.numerical, again_valid.numerical)
    assert not torch.equal(valid.numerical, other_valid.numerical)


def test_holdout_split_keeps_each_group_on_one_side() -> None:
    """Check that no search_id has rows in both the training and the validation split."""
    split = TensorSplit.from_arrays(make_rows(400, 0), tiny_schema())
    train, valid = holdout_split(split, 0.2, seed=0)
    assert not set(train.groups.tolist()) & set(valid.groups.tolist())


def test_holdout_split_stratifies_rare_labels() -> None:
    """Check that stratification holds out round(10 %) of the groups of each label stratum.

    1000 one-row groups with 30 clicks of which 10 convert: the validation part gets 97
    groups without a click, 2 with a click only and 1 with a conversion.
    """
    rows = make_rows(1000, 0)
    rows["search_id"] = np.arange(1000, dtype=np.int64)
    rows["click"][:] = 0
    rows["conversion"][:] = 0
    rows["click"][:30] = 1
    rows["conversion"][:10] = 1
    split = TensorSplit.from_arrays(rows, tiny_schema())
    _, valid = holdout_split(split, 0.1, seed=0, stratify=True)
    assert len(valid) == 100
    assert int(valid.labels[:, 0].sum()) == 3
    assert int(valid.labels[:, 1].sum()) == 1


def test_holdout_split_stratifies_pages_by_their_best_label() -> None:
    """Check that a page's stratum is its most advanced label: 10 pages of 4 rows, one
    converting row on each of 5 pages; holding out 20 % takes 1 converting page of the 5
    and 1 plain page of the 5.
    """
    rows = make_rows(40, 0)
    rows["search_id"] = np.repeat(np.arange(10), 4).astype(np.int64)
    rows["click"][:] = 0
    rows["conversion"][:] = 0
    rows["click"][0:20:4] = 1
    rows["conversion"][0:20:4] = 1
    split = TensorSplit.from_arrays(rows, tiny_schema())
    _, valid = holdout_split(split, 0.2, seed=1, stratify=True)
    assert len(valid) == 8
    assert int(valid.labels[:, 1].sum()) == 1

"""Tests of `taa grid`: config checks, resuming, and the results and summary it writes.

The training steps are replaced by a stand-in that counts its calls and writes final
metrics with known values, so these tests check the grid's own logic in well under a
second each; the real trainers are exercised by the demo test and the trainers' tests.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from taa.cli.main import main
from taa.data.schema import CategoricalField, Schema
from taa.errors import ConfigError, DataError, TaaError
from taa.experiments.grid import (
    GridConfig,
    GridResult,
    cell_dir,
    cells_of,
    grid_config_from_dict,
    load_grid_config,
    run_grid,
)
from taa.experiments.pipeline import DataSpec, PreparedPair

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
METHOD_OFFSET = {"taa": 0.02, "finetune": 0.01, "target-only": 0.0}


def fake_auc(method: str, fraction: float, seed: int) -> float:
    """The click AUC the stand-in trainer reports for a cell."""
    return 0.70 + METHOD_OFFSET[method] + fraction + 0.01 * seed


class CountingSteps:
    """A stand-in for the real steps: counts calls and writes known final metrics."""

    def __init__(self, fail_method: str | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_method = fail_method
        self.sources: list[tuple[str, int]] = []

    def prepare(self, spec: DataSpec, work: Path) -> PreparedPair:
        self.calls["prepare"] += 1
        return PreparedPair(work / "dataset", "ES", "US")

    def sample(self, pair: PreparedPair, fraction: float, seed: int, valid_fraction: float) -> str:
        self.calls["sample"] += 1
        return f"f{fraction:g}-s{seed}"

    def pretrain(
        self, pair: PreparedPair, model: str, seed: int, run_dir: Path, options: dict[str, Any]
    ) -> Path:
        self.calls["pretrain"] += 1
        self.sources.append((model, seed))
        return run_dir / "checkpoints" / "best.pt"

    def adapt(
        self,
        pair: PreparedPair,
        method: str,
        sample: str,
        seed: int,
        source_checkpoint: Path,
        run_dir: Path,
        options: dict[str, Any],
    ) -> Path:
        self.calls["adapt"] += 1
        if method == self.fail_method:
            raise RuntimeError(f"{method} diverged")
        fraction = float(sample.split("-")[0][1:])
        run_dir.mkdir(parents=True, exist_ok=True)
        final = {
            "method": method,
            "model": source_checkpoint.parts[-5],
            "domain": pair.target,
            "split": "test",
            "best_epoch": 2,
            "epochs_run": 3,
            "tasks": {
                "click": {
                    "auc": fake_auc(method, fraction, seed),
                    "logloss": 0.1,
                    "gauc": 0.6,
                    "rows": 100,
                    "positives": 5,
                },
                "conversion": {
                    "auc": None,
                    "logloss": 0.01,
                    "gauc": None,
                    "rows": 100,
                    "positives": 0,
                },
            },
        }
        (run_dir / "final_metrics.json").write_text(json.dumps(final))
        return run_dir


def small_grid(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "data": {"simulate": True, "source": "es", "target": "us", "rows": 1000},
        "models": ["mmoe", "ple"],
        "methods": ["taa", "finetune"],
        "fractions": [0.01, 0.05],
        "seeds": [0, 1],
        "train": {"epochs": 2},
    }
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory: pytest.TempPathFactory) -> tuple[GridResult, CountingSteps]:
    """One finished grid of 16 cells, shared by the tests that only read its outputs."""
    steps = CountingSteps()
    out = tmp_path_factory.mktemp("grid")
    return run_grid(grid_config_from_dict(small_grid()), out, steps=steps), steps


def test_grid_runs_every_cell_once_and_shares_sources(
    finished_grid: tuple[GridResult, CountingSteps],
) -> None:
    """Check that 2 models x 2 methods x 2 fractions x 2 seeds trains 16 cells, 4 sources."""
    result, steps = finished_grid
    assert steps.calls == Counter(prepare=1, sample=4, pretrain=4, adapt=16)
    assert len(result.ran) == 16 and not result.skipped


def test_grid_shared_source_pretrains_once_per_model(tmp_path: Path) -> None:
    """Check that source_per_seed = false pretrains each model once, with the first seed."""
    steps = CountingSteps()
    config = grid_config_from_dict(small_grid(source_per_seed=False, fractions=[0.01]))
    run_grid(config, tmp_path, steps=steps)
    assert steps.calls["adapt"] == 8
    assert steps.sources == [("mmoe", 0), ("ple", 0)]
    assert "one source model per model is shared" in (tmp_path / "summary.md").read_text()


def test_grid_resume_skips_finished_cells(tmp_path: Path) -> None:
    """Check that running a finished grid again trains nothing."""
    config = grid_config_from_dict(small_grid(models=["mmoe"], fractions=[0.01]))
    run_grid(config, tmp_path, steps=CountingSteps())
    again = CountingSteps()
    result = run_grid(config, tmp_path, steps=again)
    assert again.calls["adapt"] == 0 and again.calls["pretrain"] == 0
    assert again.calls["sample"] == 0
    assert len(result.skipped) == 4


def test_grid_resume_runs_only_unfinished_cell(tmp_path: Path) -> None:
    """Check that after losing one cell's final metrics only that cell (and its inputs) runs."""
    config = grid_config_from_dict(small_grid(models=["mmoe"], fractions=[0.01]))
    run_grid(config, tmp_path, steps=CountingSteps())
    lost = cells_of(config)[2]
    (cell_dir(tmp_path, lost) / "final_metrics.json").unlink()
    again = CountingSteps()
    result = run_grid(config, tmp_path, steps=again)
    assert again.calls == Counter(prepare=1, sample=1, pretrain=1, adapt=1)
    assert result.ran == [lost]


def test_grid_results_csv_has_one_row_per_cell_and_task(
    finished_grid: tuple[GridResult, CountingSteps],
) -> None:
    """Check that results.csv has 16 cells x 2 tasks rows with the values the cells wrote."""
    result = finished_grid[0]
    with open(result.results_csv) as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 32
    row = next(
        item
        for item in rows
        if (item["model"], item["method"], item["fraction"], item["seed"], item["task"])
        == ("ple", "taa", "0.05", "1", "click")
    )
    assert float(row["auc"]) == pytest.approx(fake_auc("taa", 0.05, 1))
    assert row["run_dir"] == "runs/ple/taa/f0.05/s1"


def test_grid_summary_statistics_by_hand(finished_grid: tuple[GridResult, CountingSteps]) -> None:
    """Check a group's mean, std and 95 % interval over two seeds against hand arithmetic.

    taa at fraction 0.01: AUCs 0.73 and 0.74 -> mean 0.735, std 0.01 / sqrt(2) = 0.0070711,
    half-width t_{0.975,1} * std / sqrt(2) = 12.7062 * 0.005 = 0.063531.
    """
    result = finished_grid[0]
    with open(result.summary_csv) as stream:
        rows = list(csv.DictReader(stream))
    row = next(
        item
        for item in rows
        if (item["model"], item["method"], item["fraction"], item["task"], item["metric"])
        == ("mmoe", "taa", "0.01", "click", "auc")
    )
    assert int(row["count"]) == 2
    assert float(row["mean"]) == pytest.approx(0.735)
    assert float(row["std"]) == pytest.approx(0.0070711, abs=1e-6)
    assert float(row["ci_low"]) == pytest.approx(0.735 - 0.063531, abs=1e-5)
    assert float(row["ci_high"]) == pytest.approx(0.735 + 0.063531, abs=1e-5)


def test_grid_summary_markdown_holds_the_group(
    finished_grid: tuple[GridResult, CountingSteps],
) -> None:
    """Check that summary.md has the group's row with mean, std and interval as computed."""
    result = finished_grid[0]
    markdown = result.summary_markdown.read_text()
    assert "| mmoe | taa | 0.01 | click | 2 | 0.7350 | 0.0071 | [0.6715, 0.7985] |" in markdown


def test_grid_undefined_auc_counts_as_missing(
    finished_grid: tuple[GridResult, CountingSteps],
) -> None:
    """Check that a task whose AUC is undefined in every seed gets a NaN mean, not a crash."""
    result = finished_grid[0]
    conversion = [
        item for item in result.summaries if item.task == "conversion" and item.metric == "auc"
    ]
    assert conversion and all(math.isnan(item.summary.mean) for item in conversion)
    assert all(item.summary.missing == 2 for item in conversion)


def test_grid_failed_cells_are_reported_after_the_rest(tmp_path: Path) -> None:
    """Check that a failing method is raised at the end, naming the cells, after the others ran."""
    steps = CountingSteps(fail_method="finetune")
    config = grid_config_from_dict(small_grid(models=["mmoe"], fractions=[0.01]))
    with pytest.raises(TaaError, match=r"2 of 4 grid cells failed \(mmoe/finetune/f0.01/s0: "):
        run_grid(config, tmp_path, steps=steps)
    assert sum(1 for _ in tmp_path.rglob("final_metrics.json")) == 2


def test_grid_refuses_output_of_other_settings(tmp_path: Path) -> None:
    """Check that a grid folder made with other training options is not mixed with new cells."""
    small = {"models": ["mmoe"], "fractions": [0.01], "seeds": [0], "methods": ["taa"]}
    run_grid(grid_config_from_dict(small_grid(**small)), tmp_path, steps=CountingSteps())
    changed = grid_config_from_dict(small_grid(**small, train={"epochs": 3}))
    with pytest.raises(ConfigError, match=r"holds a grid run with other 'train' settings"):
        run_grid(changed, tmp_path, steps=CountingSteps())


def test_grid_writes_plots(finished_grid: tuple[GridResult, CountingSteps]) -> None:
    """Check that AUC and log-loss plots against fraction are written as PNG files."""
    result = finished_grid[0]
    assert [path.name for path in result.plots] == [
        "auc_by_fraction.png",
        "logloss_by_fraction.png",
    ]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in result.plots)


def test_example_configs_agree() -> None:
    """Check that the TOML and YAML example grids load and describe the same grid."""
    toml_config = load_grid_config(EXAMPLES / "grid-simulated.toml")
    yaml_config = load_grid_config(EXAMPLES / "grid-simulated.yaml")
    assert isinstance(toml_config, GridConfig)
    assert toml_config == yaml_config
    assert {"mmoe", "ple", "aitm"} <= set(toml_config.models)
    assert {"taa", "finetune", "target-only"} <= set(toml_config.methods)
    assert len(toml_config.seeds) >= 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_list": ["mmoe"]}, r"unknown keys \['model_list'\]"),
        ({"models": ["mmoe", "transformer"]}, r"models: unknown model 'transformer'; choose"),
        ({"methods": ["taa", "magic"]}, r"methods: unknown method 'magic'; choose from"),
        ({"methods": []}, r"methods must be a non-empty list, got \[\]"),
        ({"fractions": [0.01, 1.5]}, r"fractions: 1.5 is outside \(0, 1\]"),
        ({"fractions": ["1%"]}, r"fractions: '1%' is not a number"),
        ({"seeds": [0, -1]}, r"seeds: -1 is not an integer >= 0"),
        ({"seeds": [0, 0]}, r"seeds lists \['0'\] more than once"),
        ({"valid_fraction": 1.0}, r"valid_fraction must be a number strictly between 0 and 1"),
        ({"source_per_seed": "no"}, r"source_per_seed must be true or false, got 'no'"),
        ({"train": {"seed": 3}}, r"train sets \['seed'\], which the grid sets for every cell"),
        ({"train": {"epochz": 3}}, r"train has unknown options \['epochz'\]; allowed:"),
        ({"train": {"epochs": 0}}, r"option --epochs got 0; allowed: an integer >= 1"),
        ({"adapt": {"critic_steps": 0}}, r"option --critic-steps got 0"),
        ({"model": {"dropout": 1.5}}, r"model option dropout must be in \[0, 1\), got 1.5"),
        ({"data": {"simulate": True, "source": "es"}}, r"data.target must be a country code"),
        ({"data": {"source": "es", "target": "es"}}, r"source and target are both 'es'"),
        ({"data": {"source": "a", "target": "b", "rowz": 5}}, r"data has unknown keys \['rowz'\]"),
        (
            {"data": {"simulate": "yes", "source": "a", "target": "b"}},
            r"data.simulate has the wrong type: 'yes'",
        ),
    ],
)
def test_grid_config_errors(changes: dict[str, Any], message: str) -> None:
    """Check that each kind of bad grid config is refused with a message naming the key."""
    with pytest.raises(ConfigError, match=message):
        grid_config_from_dict(small_grid(**changes), source="grid.toml")


def test_grid_config_missing_key() -> None:
    """Check that a config without seeds names the missing key and where to see a full one."""
    data = small_grid()
    del data["seeds"]
    with pytest.raises(ConfigError, match=r"missing key 'seeds'; see examples/grid-simulated"):
        grid_config_from_dict(data, source="grid.toml")


def test_grid_config_file_suffix(tmp_path: Path) -> None:
    """Check that a config file of unknown format is refused, naming the allowed suffixes."""
    path = tmp_path / "grid.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match=r"unknown suffix '.json'; use .toml, .yaml or .yml"):
        load_grid_config(path)


def test_grid_config_bad_toml(tmp_path: Path) -> None:
    """Check that a TOML syntax error is reported with the file name."""
    path = tmp_path / "grid.toml"
    path.write_text("models = [mmoe\n")
    with pytest.raises(ConfigError, match=r"grid.toml: not valid TOML"):
        load_grid_config(path)


def test_grid_command_dry_run_lists_cells(capsys: pytest.CaptureFixture[str]) -> None:
    """Check that `taa grid CONFIG --dry-run` lists all 72 cells of the example and trains none."""
    main(["grid", str(EXAMPLES / "grid-simulated.toml"), "--dry-run", "--out", "unused-folder"])
    printed = capsys.readouterr().out
    assert printed.startswith("72 cells, output unused-folder:")
    assert "  todo  aitm/target-only/f0.05/s2" in printed
    assert not Path("unused-folder").exists()


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("adapt", "epochs", "ten", r"\[adapt\] epochs = 'ten' must be an integer"),
        ("train", "lr", "fast", r"\[train\] lr = 'fast' must be a number"),
        ("model", "expert_hidden", "128", r"\[model\] expert_hidden = '128' must be a list"),
    ],
)
def test_grid_config_names_a_value_of_the_wrong_type(
    section: str, key: str, value: str, message: str
) -> None:
    """Check that a wrongly typed value names its section, key and value."""
    data = small_grid()
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=message):
        grid_config_from_dict(data)


def test_grid_refuses_a_missing_dataset_or_domain_before_writing(tmp_path: Path) -> None:
    """Check that a prepared dataset that is missing, or lacks a domain, fails up front."""
    from taa.experiments.pipeline import DataSpec

    with pytest.raises(DataError, match=r"no schema file"):
        DataSpec(source="ES", target="US", dataset=tmp_path / "nodata").check_inputs()
    folder = tmp_path / "prepared"
    folder.mkdir()
    Schema(
        categorical=(CategoricalField("c1", 3),),
        numerical=(),
        tasks=("click",),
        domains=("ES", "US"),
    ).save(folder)
    with pytest.raises(ConfigError, match=r"target 'ZZ' is not a domain of .*\['ES', 'US'\]"):
        DataSpec(source="ES", target="ZZ", dataset=folder).check_inputs()
    with pytest.raises(ConfigError, match=r"source 'nowhere' is not a folder"):
        DataSpec(source="nowhere", target=str(folder)).check_inputs()

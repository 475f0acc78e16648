"""End-to-end tests of the demo, a real (tiny) grid and their reports.

One tiny demo is run once for the module (simulated data, a 1 % sample, one epoch of a
small MMoE); the other tests read its folder or reuse its prepared dataset.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from taa.cli.main import main
from taa.errors import ConfigError, DataError
from taa.experiments.demo import DemoConfig, DemoResult, run_demo
from taa.experiments.grid import grid_config_from_dict, run_grid
from taa.experiments.pipeline import DataSpec, PipelineSteps
from taa.experiments.report import write_report

pytestmark = pytest.mark.filterwarnings("ignore::taa.errors.UndefinedMetricWarning")

METHODS = ("source-only", "finetune", "target-only", "taa")
TINY = {
    "rows": 6000,
    "epochs": 1,
    "adapt_epochs": 1,
    "batch_size": 128,
    "adapt_batch_size": 32,
    "embedding_dim": 4,
    "expert_hidden": (16, 8),
    "tower_hidden": (8,),
    "threads": 1,
}
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "aliexpress-real"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """A tiny demo on simulated data, run once for the module."""
    out = tmp_path_factory.mktemp("demo") / "taa-demo"
    return run_demo(DemoConfig(out=out, **TINY))


def test_demo_table_has_every_method(demo: DemoResult) -> None:
    """Check that the printed table has one row per method, in the demo's order."""
    assert [row[0] for row in demo.table.rows] == list(METHODS)
    assert demo.table.columns[:3] == ["method", "click AUC", "click log-loss"]


def test_demo_aucs_are_finite_where_defined(demo: DemoResult) -> None:
    """Check every method's AUCs: finite, except where the test split has one class only."""
    for method in METHODS:
        tasks = demo.metrics[method].tasks
        assert 0.0 <= tasks["click"]["auc"] <= 1.0
        for values in tasks.values():
            assert math.isfinite(values["logloss"])
            one_class = values["positives"] in (0, values["rows"])
            assert math.isnan(values["auc"]) == one_class


def test_demo_evaluates_on_target_test_split(demo: DemoResult) -> None:
    """Check that every method is scored on the target's test split, and the source on its own."""
    assert {(item.domain, item.split) for item in demo.metrics.values()} == {("US", "test")}
    assert "Source model on its own ES test split: click AUC" in demo.table.notes[-1]


def test_demo_source_only_is_the_source_model(demo: DemoResult) -> None:
    """Check that source-only did not train: its checkpoint is the pretrained epoch."""
    assert demo.metrics["source-only"].epochs_run == 0


def test_demo_writes_results_and_report(demo: DemoResult) -> None:
    """Check the demo's table files and its report with the projection embedded."""
    markdown = (demo.out / "results.md").read_text()
    assert all(f"| {method} |" in markdown for method in METHODS)
    assert (demo.out / "results.csv").read_text().count("\n") == 1 + 2 * len(METHODS)
    assert demo.report is not None
    page = demo.report.html.read_text()
    assert "Task features before and after adaptation" in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) >= 5


def test_demo_run_again_reuses_finished_steps(demo: DemoResult) -> None:
    """Check that a second demo with the same settings retrains nothing and gives the table."""
    finals = {method: path / "final_metrics.json" for method, path in demo.runs.items()}
    stamps = {method: path.stat().st_mtime_ns for method, path in finals.items()}
    again = run_demo(DemoConfig(out=demo.out, report=False, **TINY))
    assert {method: path.stat().st_mtime_ns for method, path in finals.items()} == stamps
    assert again.table.rows == demo.table.rows


def test_demo_refuses_folder_of_other_settings(demo: DemoResult) -> None:
    """Check that a demo folder made with other settings is not reused silently."""
    changed = {**TINY, "epochs": 2}
    with pytest.raises(ConfigError, match=r"epochs: 1 -> 2\); pass --overwrite"):
        run_demo(DemoConfig(out=demo.out, **changed))


def test_demo_command_prints_table_and_paths(
    demo: DemoResult, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that `taa demo` (reusing the finished folder) prints the table and where things are."""
    sizes = [
        "--rows",
        "6000",
        "--epochs",
        "1",
        "--adapt-epochs",
        "1",
        "--batch-size",
        "128",
        "--adapt-batch-size",
        "32",
        "--embedding-dim",
        "4",
        "--expert-hidden",
        "16,8",
        "--tower-hidden",
        "8",
        "--threads",
        "1",
    ]
    main(["-q", "demo", "--out", str(demo.out), "--no-report", *sizes])
    printed = capsys.readouterr().out
    for method in METHODS:
        assert re.search(rf"^{method}\s+\d\.\d{{4}}", printed, flags=re.MULTILINE)
    assert f"work folder: {demo.out}" in printed
    assert "table:" in printed


def test_demo_option_errors() -> None:
    """Check that --source without --target is refused with the fix."""
    with pytest.raises(ConfigError, match=r"--source and --target go together"):
        DemoConfig(source=REAL / "A")


def test_demo_unknown_method() -> None:
    """Check that an unknown method in --methods is refused, naming the allowed ones."""
    with pytest.raises(ConfigError, match=r"option --methods got 'taa,magic'; allowed"):
        DemoConfig(methods="taa,magic")


def test_demo_real_rows_need_a_larger_fraction(tmp_path: Path) -> None:
    """Check that 1 % of the 100 real B rows is refused by the sampler with a clear message."""
    config = DemoConfig(out=tmp_path / "real", source=REAL / "A", target=REAL / "B", **TINY)
    with pytest.raises(DataError, match=r"raise --fraction to at least"):
        run_demo(config)


def test_real_grid_and_its_report(demo: DemoResult, tmp_path: Path) -> None:
    """Check a real two-cell grid on the demo's dataset, then the report of the grid folder."""
    config = grid_config_from_dict(
        {
            "data": {"dataset": str(demo.pair.dataset), "source": "ES", "target": "US"},
            "models": ["mmoe"],
            "methods": ["source-only", "finetune"],
            "fractions": [0.01],
            "seeds": [0],
            "train": {"epochs": 1, "batch_size": 128, "threads": 1},
            "model": {"embedding_dim": 4, "expert_hidden": [16, 8], "tower_hidden": [8]},
        }
    )
    result = run_grid(config, tmp_path / "grid")
    assert len(result.ran) == 2
    report = write_report(tmp_path / "grid")
    assert report.kind == "grid"
    page = report.html.read_text()
    assert "| mmoe | finetune | 0.01 | click | 1 |" in report.markdown.read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2


def test_prepared_data_of_other_settings_is_not_reused(demo: DemoResult) -> None:
    """Check that a work folder's dataset is refused for a different data spec (shift)."""
    other = DataSpec(source="es", target="us", simulate=True, rows=6000, shift=0.1)
    with pytest.raises(ConfigError, match=r"holds data made with other settings"):
        PipelineSteps().prepare(other, demo.out / "work")


def test_prepared_data_is_reused(demo: DemoResult) -> None:
    """Check that the same data spec gets the existing dataset and domains back."""
    same = DemoConfig(out=demo.out, **TINY).data_spec()
    assert PipelineSteps().prepare(same, demo.out / "work") == demo.pair

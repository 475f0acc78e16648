"""Tests of the plots and of `taa report` on run folders built here by hand."""

from __future__ import annotations

import base64
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from taa.cli.main import main
from taa.errors import DataError
from taa.experiments.grid import cell_dir, cells_of
from taa.experiments.grid_config import grid_config_from_dict
from taa.experiments.plots import (
    PNG_SIGNATURE,
    metric_by_fraction_figure,
    plot_metric_by_fraction,
    plot_projections,
    plot_training_curves,
    plot_wasserstein,
    principal_axes,
    project_pair,
    training_curves_figure,
    wasserstein_figure,
)
from taa.experiments.report import ReportResult, detect_kind, write_report
from taa.experiments.results import read_final_metrics, read_history
from taa.experiments.stats import GroupSummary, Summary, summarize

TASKS = ("click", "conversion")


def _history(wasserstein: bool = True) -> list[dict]:
    records = []
    for epoch in range(4):
        train = {
            "loss": 0.5 - 0.05 * epoch,
            "task_loss": {"click": 0.3 - 0.02 * epoch, "conversion": 0.2 - 0.01 * epoch},
        }
        if wasserstein:
            train["critic_loss"] = {"click": -0.4 + 0.1 * epoch, "conversion": -0.3}
            train["wasserstein"] = {"click": 0.4 - 0.1 * epoch, "conversion": 0.3 - 0.05 * epoch}
        records.append(
            {
                "epoch": epoch,
                "seconds": 1.5,
                "train": train,
                "valid": {
                    "click": {"auc": 0.6 + 0.02 * epoch, "logloss": 0.1, "gauc": 0.55},
                    "conversion": {"auc": float("nan"), "logloss": 0.01, "gauc": float("nan")},
                },
            }
        )
    return records


def make_run(folder: Path, method: str = "taa", wasserstein: bool = True) -> Path:
    """A run folder as the trainers write it, with known final metrics."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"command": "adapt", "config": {"method": method}, "model": "mmoe"})
    )
    lines = "".join(json.dumps(record) + "\n" for record in _history(wasserstein))
    (folder / "metrics.jsonl").write_text(lines)
    final = {
        "method": method,
        "model": "mmoe",
        "domain": "US",
        "split": "test",
        "best_epoch": 3,
        "epochs_run": 4,
        "tasks": {
            "click": {
                "auc": 0.7123,
                "logloss": 0.0934,
                "gauc": 0.6012,
                "rows": 5000,
                "positives": 101,
            },
            "conversion": {
                "auc": None,
                "logloss": 0.0061,
                "gauc": None,
                "rows": 5000,
                "positives": 0,
            },
        },
    }
    (folder / "final_metrics.json").write_text(json.dumps(final))
    return folder


@pytest.fixture(scope="module")
def run_report(tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    """One report of a taa run folder, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("report")
    return write_report(make_run(root / "run"), root / "out")


def _is_png(data: bytes) -> bool:
    return data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_training_curves_write_a_png(tmp_path: Path) -> None:
    """Check that the training curves plot is a valid PNG file."""
    path = plot_training_curves(_history(), tmp_path / "curves.png", title="taa mmoe")
    assert _is_png(path.read_bytes())


def test_training_curves_refuse_empty_history(tmp_path: Path) -> None:
    """Check that a run without a finished epoch is refused with a message naming the file."""
    with pytest.raises(DataError, match=r"curves\.png: the run's metrics\.jsonl is empty"):
        plot_training_curves([], tmp_path / "curves.png")


def test_wasserstein_plot_writes_a_png(tmp_path: Path) -> None:
    """Check that a history with critic estimates gives a valid PNG."""
    path = plot_wasserstein(_history(), tmp_path / "w.png")
    assert path is not None and _is_png(path.read_bytes())


def test_wasserstein_plot_skipped_without_critics(tmp_path: Path) -> None:
    """Check that a method without critics (finetune) gives no Wasserstein plot and no file."""
    assert plot_wasserstein(_history(wasserstein=False), tmp_path / "w.png") is None
    assert not (tmp_path / "w.png").exists()


def test_metric_by_fraction_writes_a_png(tmp_path: Path) -> None:
    """Check that the grid plot of AUC against fraction (two models, two methods) is a PNG."""
    summaries = [
        GroupSummary(model, method, fraction, task, "auc", summarize([0.7, 0.71, 0.72]))
        for model in ("mmoe", "ple")
        for method in ("taa", "finetune")
        for fraction in (0.01, 0.1)
        for task in TASKS
    ]
    path = plot_metric_by_fraction(summaries, tmp_path / "auc.png")
    assert _is_png(path.read_bytes())


def _visible_ticks(axis: Any) -> list[str]:
    """The x tick labels inside the axis's view, as drawn."""
    axis.figure.canvas.draw()
    low, high = axis.get_xlim()
    return [
        label.get_text()
        for label in axis.get_xticklabels()
        if low <= label.get_position()[0] <= high
    ]


EPOCH_FIGURES = {"curves": training_curves_figure, "wasserstein": wasserstein_figure}


@pytest.mark.parametrize("figure_name", list(EPOCH_FIGURES))
@pytest.mark.parametrize(
    ("epochs", "expected"),
    [([1], ["1"]), ([0, 1], ["0", "1"]), ([2, 3, 4], ["2", "3", "4"])],
)
def test_epoch_axis_ticks_are_whole_epochs(
    figure_name: str, epochs: list[int], expected: list[str]
) -> None:
    """Check that epoch axes tick whole epochs only, a run of one epoch included."""
    history = [dict(record, epoch=epoch) for record, epoch in zip(_history(), epochs, strict=False)]
    figure = EPOCH_FIGURES[figure_name](history)
    for axis in figure.axes:
        assert _visible_ticks(axis) == expected


def _bar_ends(metric: str, mean: float, half_width: float) -> tuple[float, float]:
    """The lower and upper end of the one interval bar drawn for a single summary."""
    summary = Summary(3, mean, 0.02, half_width, 0.95, 0)
    figure = metric_by_fraction_figure(
        [GroupSummary("mmoe", "taa", 0.01, "click", metric, summary)], metric
    )
    container = figure.axes[0].containers[0]
    (segment,) = container.lines[2][0].get_segments()
    return float(segment[0][1]), float(segment[1][1])


@pytest.mark.parametrize(
    ("metric", "mean", "half_width", "ends"),
    [
        ("auc", 0.98, 0.05, (0.93, 1.0)),  # the interval reaches 1.03
        ("auc", 0.03, 0.05, (0.0, 0.08)),  # and -0.02 here
        ("gauc", 0.99, 0.1, (0.89, 1.0)),
        ("logloss", 0.02, 0.05, (0.0, 0.07)),  # log-loss is bounded below only
        ("logloss", 1.5, 0.1, (1.4, 1.6)),
        ("auc", 0.7, 0.05, (0.65, 0.75)),  # inside the range: unchanged
    ],
)
def test_interval_bars_are_drawn_clipped_to_the_metric_range(
    metric: str, mean: float, half_width: float, ends: tuple[float, float]
) -> None:
    """Check that a grid plot's 95 % bar is drawn within the values the metric can take."""
    assert _bar_ends(metric, mean, half_width) == pytest.approx(ends, abs=1e-12)


def test_wasserstein_plot_explains_its_sign() -> None:
    """Check that the Wasserstein plot names the difference it shows and what its trend means."""
    figure = wasserstein_figure(_history())
    assert figure is not None
    assert figure.axes[0].get_ylabel() == "critic(source) - critic(target)"
    note = " ".join(text.get_text() for text in figure.texts)
    assert "critic is trained to raise it, the encoder to lower it" in note
    assert "Falling: target features move towards the source ones" in note


def test_principal_axes_match_covariance_eigenvectors() -> None:
    """Check the SVD axes and variances against an eigen-decomposition of the covariance."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 5, generator=generator, dtype=torch.float64)
    features = features * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    axes, variances = principal_axes(features)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(features.T))
    assert torch.allclose(variances, eigenvalues.flip(0)[:2], rtol=1e-9)
    for index in range(2):
        cosine = torch.dot(axes[index], eigenvectors[:, -1 - index]).abs()
        assert cosine.item() == pytest.approx(1.0, abs=1e-9)


def test_project_pair_centroid_gap_by_hand() -> None:
    """Check the centroid gap of two point pairs worked by hand.

    Source (0, ±1) and target (4, ±1): means 4 apart; pooled centre (2, 0); every point
    lies sqrt(4 + 1) from it, so the gap is 4 / sqrt(5). PC1 is the x axis, carrying
    variance 16/3 of the total 16/3 + 4/3.
    """
    source = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    target = torch.tensor([[4.0, 1.0], [4.0, -1.0]])
    projection = project_pair(source, target)
    assert projection.centroid_gap == pytest.approx(4 / math.sqrt(5))
    assert projection.explained[0].item() == pytest.approx(0.8)
    assert projection.source[:, 0].abs().tolist() == pytest.approx([2.0, 2.0])


def test_projection_plot_writes_a_png(tmp_path: Path) -> None:
    """Check that the before/after projection plot of two tasks is a valid PNG."""
    generator = torch.Generator().manual_seed(1)
    pairs = [
        project_pair(
            torch.randn(50, 8, generator=generator), torch.randn(60, 8, generator=generator) + shift
        )
        for shift in (2.0, 0.5)
    ]
    path = plot_projections(list(TASKS), pairs, pairs[::-1], tmp_path / "projection.png")
    assert _is_png(path.read_bytes())


def test_history_reader_names_bad_line(tmp_path: Path) -> None:
    """Check that a corrupt metrics.jsonl line is reported with its file and line number."""
    run = make_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as stream:
        stream.write('{"epoch": 4, "train": \n')
    with pytest.raises(DataError, match=r"metrics\.jsonl, line 5: not valid JSON"):
        read_history(run)


def test_final_metrics_reader_turns_null_into_nan(tmp_path: Path) -> None:
    """Check that an undefined metric (JSON null) is read as NaN."""
    summary = read_final_metrics(make_run(tmp_path / "run"))
    assert summary.tasks["click"]["auc"] == pytest.approx(0.7123)
    assert math.isnan(summary.tasks["conversion"]["auc"])


def test_report_on_run_folder_embeds_images_and_values(run_report: ReportResult) -> None:
    """Check that a run report's HTML holds its plots as PNG data URIs and the metric values."""
    page = run_report.html.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2  # training curves and Wasserstein estimates
    assert all(_is_png(base64.b64decode(image)) for image in images)
    for value in ("0.7123", "0.0934", "0.6012", "5000", "101"):
        assert f">{value}<" in page


def test_report_html_is_self_contained(run_report: ReportResult) -> None:
    """Check that the HTML page loads nothing from outside: no scripts, links or URLs."""
    page = run_report.html.read_text()
    assert "<script" not in page
    assert "<link" not in page
    assert "http://" not in page and "https://" not in page


def test_report_markdown_links_existing_pngs(run_report: ReportResult) -> None:
    """Check that the Markdown report links PNG files that exist beside it and holds the table."""
    markdown = run_report.markdown.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == 2
    for link in links:
        assert _is_png((run_report.markdown.parent / link).read_bytes())
    assert "| click | 0.7123 | 0.0934 | 0.6012 | 5000 | 101 |" in markdown
    assert "| conversion | n/a | 0.0061 | n/a | 5000 | 0 |" in markdown


def test_report_of_finetune_run_has_no_wasserstein_plot(tmp_path: Path) -> None:
    """Check that a run without critic estimates gets only its training curves."""
    result = write_report(make_run(tmp_path / "run", "finetune", wasserstein=False))
    assert len(result.images) == 1


def test_report_refuses_unknown_folder(tmp_path: Path) -> None:
    """Check that a folder that is no run, demo or grid is refused, naming what was looked for."""
    with pytest.raises(DataError, match=r"not a run folder \(no config\.json or metrics\.jsonl\)"):
        detect_kind(tmp_path)


def test_report_command_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check that `taa report RUN --out DIR` writes both files and says where."""
    run = make_run(tmp_path / "run")
    main(["report", str(run), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "report.md").is_file()
    assert "run report:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("method", "wasserstein", "words"),
    [("finetune", False, "(1 plot)"), ("taa", True, "(2 plots)")],
)
def test_report_command_counts_plots_in_words(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    wasserstein: bool,
    words: str,
) -> None:
    """Check that `taa report` says "1 plot" for one plot and "2 plots" for two."""
    run = make_run(tmp_path / "run", method, wasserstein=wasserstein)
    main(["report", str(run)])
    assert capsys.readouterr().out.splitlines()[-1].endswith(words)


def test_report_log_line_counts_plots_in_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that the report's log line says "(1 plot)", not "(1 plots)"."""
    with caplog.at_level(logging.INFO, logger="taa.experiments.report"):
        write_report(make_run(tmp_path / "run", "finetune", wasserstein=False))
    assert caplog.messages[-1].endswith("(1 plot)")


def make_grid(folder: Path, seeds: list[int], finished_cells: int) -> Path:
    """A grid folder of one model, one method, one fraction and ``seeds`` (a cell each), the
    first ``finished_cells`` cells with a finished run folder.
    """
    config = grid_config_from_dict(
        {
            "data": {"simulate": True, "source": "es", "target": "us"},
            "models": ["mmoe"],
            "methods": ["taa"],
            "fractions": [0.5],
            "seeds": seeds,
        }
    )
    folder.mkdir(parents=True)
    (folder / "grid.json").write_text(json.dumps({"kind": "grid", "config": config.to_dict()}))
    for cell in cells_of(config)[:finished_cells]:
        make_run(cell_dir(folder, cell))
    return folder


@pytest.mark.parametrize(
    ("seeds", "words"), [([0], "1 of 1 cell finished"), ([0, 1], "1 of 2 cells finished")]
)
def test_grid_report_counts_cells_in_words(tmp_path: Path, seeds: list[int], words: str) -> None:
    """Check that a grid report with one cell finished says "1 of 1 cell", "1 of 2 cells"."""
    result = write_report(make_grid(tmp_path / "grid", seeds, finished_cells=1))
    assert f"{words}: models ['mmoe']" in result.markdown.read_text()


def test_grid_report_says_plot_bars_are_clipped(tmp_path: Path) -> None:
    """Check that the grid report's AUC plot caption says its bars are clipped, not the table."""
    markdown = write_report(
        make_grid(tmp_path / "grid", [0], finished_cells=1)
    ).markdown.read_text()
    assert (
        "_AUC against target fraction (mean over seeds, 95 % interval). Bars are drawn clipped "
        "to [0, 1]; the table gives the unclipped interval._"
    ) in markdown


def test_report_refuses_run_folder_without_metrics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that `taa report` on a run folder with no epoch yet exits 2, names the folder and
    the files it looked for, and writes nothing.
    """
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"command": "adapt", "model": "mmoe"}))
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit) as raised:
        main(["report", str(run), "--out", str(tmp_path / "out")])
    assert raised.value.code == 2
    error = capsys.readouterr().err
    assert f"error: {run}: no run metrics to report: no final_metrics.json and no epoch" in error
    assert sorted(path.name for path in tmp_path.rglob("*")) == [
        "config.json",
        "metrics.jsonl",
        "run",
    ]


def test_report_refuses_grid_without_finished_cell(tmp_path: Path) -> None:
    """Check that a grid none of whose cells finished is refused before anything is written."""
    grid = make_grid(tmp_path / "grid", [0, 1], finished_cells=0)
    with pytest.raises(
        DataError, match=r"grid: no run metrics to report: none of the grid's 2 cells has "
    ):
        write_report(grid)
    assert [path.name for path in grid.iterdir()] == ["grid.json"]


def test_report_refuses_demo_without_run_metrics(tmp_path: Path) -> None:
    """Check that a demo whose listed runs hold no metrics is refused, naming the run folders."""
    demo = tmp_path / "demo"
    demo.mkdir()
    manifest = {"kind": "demo", "runs": {"pretrain": "runs/pretrain-mmoe", "taa": "runs/taa"}}
    (demo / "demo.json").write_text(json.dumps(manifest))
    (demo / "runs" / "taa").mkdir(parents=True)
    (demo / "runs" / "taa" / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"none of the 2 run folders listed in demo\.json \("):
        write_report(demo)
    assert not (demo / "report").exists()


def test_report_of_unfinished_run_with_epochs_is_written(tmp_path: Path) -> None:
    """Check that a run still training (epoch records, no final metrics) is still reported."""
    run = make_run(tmp_path / "run")
    (run / "final_metrics.json").unlink()
    result = write_report(run)
    assert "The run has not finished: no final_metrics.json yet." in result.markdown.read_text()


def test_run_report_captions_the_wasserstein_sign(run_report: ReportResult) -> None:
    """Check that the Wasserstein plot's caption gives the difference and who raises it."""
    markdown = run_report.markdown.read_text()
    assert "mean critic(source) - mean critic(target), on the target validation rows" in markdown
    assert "The critic is trained to raise it and the encoder" in markdown

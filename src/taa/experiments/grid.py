"""Resumable experiment grids: models x methods x target fractions x seeds for one domain pair.

A grid config (TOML or YAML; see ``examples/grid-simulated.toml`` and docs/commands/grid.md)
names the data, the lists to cross and the training options. :func:`run_grid` prepares the
data once, then for every seed pretrains each model on the source, draws each target
sample and adapts with each method. The output folder::

    OUT/grid.json                                   # the resolved config
    OUT/work/...                                    # simulated data and the prepared dataset
    OUT/runs/<model>/pretrain/s<seed>/              # one source model per (model, seed)
    OUT/runs/<model>/<method>/f<fraction>/s<seed>/  # one run folder per cell
    OUT/results.csv                                 # one row per cell and task
    OUT/summary.csv, OUT/summary.md                 # mean, std, 95 % interval over seeds
    OUT/plots/auc_by_fraction.png, logloss_by_fraction.png

A cell whose run folder holds ``final_metrics.json`` is finished and skipped, so an
interrupted grid continues where it stopped when run again.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from taa.errors import ConfigError, TaaError
from taa.experiments.grid_config import GridConfig, grid_config_from_dict, load_grid_config
from taa.experiments.pipeline import DataSpec, PipelineSteps, PreparedPair
from taa.experiments.results import (
    GRID_MANIFEST,
    RunSummary,
    is_finished,
    read_final_metrics,
)
from taa.experiments.stats import GroupSummary, summarize
from taa.experiments.tables import Table, format_number
from taa.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "Cell",
    "GridConfig",
    "GridResult",
    "cell_dir",
    "cells_of",
    "grid_config_from_dict",
    "load_grid_config",
    "run_grid",
    "write_grid_results",
]

#: (model, method, fraction, task): one group of seeds in the summary.
GroupKey = tuple[str, str, float, str]

RESULTS_FILE = "results.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_MARKDOWN = "summary.md"
SUMMARY_METRICS = ("auc", "logloss", "gauc")
RESULT_COLUMNS = (
    "model",
    "method",
    "fraction",
    "seed",
    "task",
    "auc",
    "logloss",
    "gauc",
    "rows",
    "positives",
    "best_epoch",
    "epochs_run",
    "run_dir",
)


@dataclass(frozen=True)
class Cell:
    """One grid cell: a model adapted with a method on a target sample of a seed."""

    model: str
    method: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}/{self.method}/f{self.fraction:g}/s{self.seed}"


def cells_of(config: GridConfig) -> list[Cell]:
    """Every cell of the grid, seeds outermost so that each seed's sources are reused early."""
    return [
        Cell(model, method, fraction, seed)
        for seed in config.seeds
        for model in config.models
        for fraction in config.fractions
        for method in config.methods
    ]


def cell_dir(out: Path, cell: Cell) -> Path:
    """The run folder of a cell."""
    return out / "runs" / cell.model / cell.method / f"f{cell.fraction:g}" / f"s{cell.seed}"


def pretrain_dir(out: Path, model: str, seed: int) -> Path:
    """The run folder of the source model of ``model`` and ``seed``."""
    return out / "runs" / model / "pretrain" / f"s{seed}"


class GridSteps(Protocol):
    """What the grid needs done; :class:`~taa.experiments.pipeline.PipelineSteps` does it."""

    def prepare(self, spec: DataSpec, work: Path) -> PreparedPair: ...

    def sample(
        self, pair: PreparedPair, fraction: float, seed: int, valid_fraction: float
    ) -> str: ...

    def pretrain(
        self, pair: PreparedPair, model: str, seed: int, run_dir: Path, options: dict[str, Any]
    ) -> Path: ...

    def adapt(
        self,
        pair: PreparedPair,
        method: str,
        sample: str,
        seed: int,
        source_checkpoint: Path,
        run_dir: Path,
        options: dict[str, Any],
    ) -> Path: ...


@dataclass
class GridResult:
    """What :func:`run_grid` did and wrote.

    Attributes:
        out: the grid's output folder.
        cells: every cell in order.
        ran: cells trained in this call.
        skipped: cells already finished before this call.
        failed: cells that raised, with the error message.
        results_csv, summary_csv, summary_markdown: the tables written.
        plots: the PNG plots written.
        summaries: the statistics over seeds per (model, method, fraction, task, metric).
        unchanged: per group, the seeds that kept the starting model (:func:`count_unchanged`).
    """

    out: Path
    cells: list[Cell]
    ran: list[Cell]
    skipped: list[Cell]
    failed: dict[Cell, str]
    results_csv: Path
    summary_csv: Path
    summary_markdown: Path
    plots: list[Path]
    summaries: list[GroupSummary]
    unchanged: dict[GroupKey, int] = field(default_factory=dict)


def run_grid(
    config: GridConfig,
    out: str | Path | None = None,
    *,
    steps: GridSteps | None = None,
    on_cell: Callable[[Cell, str], None] | None = None,
) -> GridResult:
    """Run every unfinished cell of a grid, then write the results, summary and plots.

    Args:
        config: the grid.
        out: output folder; default ``config.out``, else ``runs/grid``.
        steps: what prepares, samples, pretrains and adapts; the real trainers by default
            (tests pass a stand-in that counts calls).
        on_cell: called with each cell and ``"ran"``, ``"skipped"`` or ``"failed"``, e.g.
            to move a progress bar.

    Raises:
        TaaError: some cells failed (after all others ran, when ``keep_going``).
    """
    out = Path(out) if out is not None else (config.out or Path("runs") / "grid")
    if steps is None:
        config.data.check_inputs()
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or PipelineSteps(quiet=True)
    _write_manifest(out, config)

    pair = steps.prepare(config.data, out / "work")
    model_options = {"model_config": dict(config.model)}
    pretrain_options = {**config.train, **config.pretrain, **model_options}
    adapt_options = {**config.train, **config.adapt}

    cells = cells_of(config)
    ran: list[Cell] = []
    skipped: list[Cell] = []
    failed: dict[Cell, str] = {}
    # A sample or source model is made once and shared by every cell that needs it; a
    # failure is remembered too, so the cells that depend on it fail without retrying.
    shared: dict[tuple[Any, ...], Path | str | Exception] = {}

    def once(key: tuple[Any, ...], make: Callable[[], Path | str]) -> Any:
        if key not in shared:
            try:
                shared[key] = make()
            except Exception as error:
                shared[key] = error
        value = shared[key]
        if isinstance(value, Exception):
            raise value
        return value

    for cell in cells:
        run_dir = cell_dir(out, cell)
        if is_finished(run_dir):
            skipped.append(cell)
            if on_cell:
                on_cell(cell, "skipped")
            continue
        try:
            sample = once(
                ("sample", cell.fraction, cell.seed),
                lambda cell=cell: steps.sample(
                    pair, cell.fraction, cell.seed, config.valid_fraction
                ),
            )
            source_seed = cell.seed if config.source_per_seed else config.seeds[0]
            source_checkpoint = once(
                ("pretrain", cell.model, source_seed),
                lambda cell=cell, source_seed=source_seed: steps.pretrain(
                    pair,
                    cell.model,
                    source_seed,
                    pretrain_dir(out, cell.model, source_seed),
                    pretrain_options,
                ),
            )
            logger.info("grid cell %s: training", cell.name)
            steps.adapt(
                pair, cell.method, sample, cell.seed, source_checkpoint, run_dir, adapt_options
            )
        except Exception as error:  # a grid goes on; the failures are raised together below
            if not config.keep_going:
                raise
            logger.error("grid cell %s failed: %s", cell.name, error)
            failed[cell] = f"{type(error).__name__}: {error}"
            if on_cell:
                on_cell(cell, "failed")
            continue
        ran.append(cell)
        if on_cell:
            on_cell(cell, "ran")

    result = write_grid_results(out, config, cells)
    result.ran, result.skipped, result.failed = ran, skipped, failed
    if failed:
        listing = "; ".join(f"{cell.name}: {message}" for cell, message in failed.items())
        raise TaaError(
            f"{len(failed)} of {len(cells)} grid cells failed ({listing}); the others are in "
            f"{out}. Fix the cause and run the same command again: finished cells are skipped"
        )
    return result


def _write_manifest(out: Path, config: GridConfig) -> None:
    manifest = out / GRID_MANIFEST
    data = {"kind": "grid", "config": config.to_dict()}
    if manifest.is_file():
        from taa.experiments.results import read_json

        previous = read_json(manifest).get("config", {})
        settings = (
            "data",
            "train",
            "pretrain",
            "adapt",
            "model",
            "valid_fraction",
            "source_per_seed",
        )
        for key in settings:
            if previous.get(key) != data["config"].get(key):
                raise ConfigError(
                    f"{out} holds a grid run with other {key!r} settings "
                    f"({previous.get(key)!r}, now {data['config'].get(key)!r}); its finished "
                    "cells would be mixed with new ones: use another output folder (--out) "
                    "or restore the old settings"
                )
    atomic_write_json(manifest, data)


def collect_results(out: Path, cells: Iterable[Cell]) -> list[dict[str, Any]]:
    """One row per finished cell and task, with the cell's keys and its final metrics."""
    rows = []
    for cell in cells:
        run_dir = cell_dir(out, cell)
        if not is_finished(run_dir):
            continue
        summary: RunSummary = read_final_metrics(run_dir)
        for task, metrics in summary.tasks.items():
            rows.append(
                {
                    "model": cell.model,
                    "method": cell.method,
                    "fraction": cell.fraction,
                    "seed": cell.seed,
                    "task": task,
                    "auc": metrics.get("auc", math.nan),
                    "logloss": metrics.get("logloss", math.nan),
                    "gauc": metrics.get("gauc", math.nan),
                    "rows": _count(metrics.get("rows", math.nan)),
                    "positives": _count(metrics.get("positives", math.nan)),
                    "best_epoch": summary.best_epoch,
                    "epochs_run": summary.epochs_run,
                    "run_dir": run_dir.relative_to(out).as_posix(),
                }
            )
    return rows


def _count(value: float) -> int | float:
    """A row count as an int (NaN stays NaN when a run did not record it)."""
    return int(value) if math.isfinite(value) else value


def summarize_results(rows: list[dict[str, Any]]) -> list[GroupSummary]:
    """Mean, std and 95 % interval over seeds per (model, method, fraction, task, metric)."""
    groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["model"], row["method"], float(row["fraction"]), row["task"])
        groups.setdefault(key, []).append(row)
    return [
        GroupSummary(
            model,
            method,
            fraction,
            task,
            metric,
            summarize(float(item[metric]) for item in members),
        )
        for (model, method, fraction, task), members in groups.items()
        for metric in SUMMARY_METRICS
    ]


def _csv_text(columns: Iterable[str], rows: Iterable[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _csv_value(value) for key, value in row.items()})
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def count_unchanged(rows: list[dict[str, Any]]) -> dict[GroupKey, int]:
    """Per (model, method, fraction, task): seeds whose kept checkpoint is the starting model.

    That is a best epoch of 0 for a method that trains from the source model (early stopping
    found no epoch better on the validation split); ``source-only`` and ``target-only``,
    which do not start from a trained model they could keep, are left out.
    """
    counts: dict[GroupKey, int] = {}
    for row in rows:
        if row["method"] in ("source-only", "target-only"):
            continue
        key = (row["model"], row["method"], float(row["fraction"]), row["task"])
        counts[key] = counts.get(key, 0) + int(int(row["best_epoch"]) == 0)
    return counts


def summary_table(
    summaries: list[GroupSummary],
    source_per_seed: bool = True,
    unchanged: dict[GroupKey, int] | None = None,
) -> Table:
    """The grid's Markdown table: AUC and log-loss mean, std and 95 % interval per group.

    Args:
        summaries: the statistics per group and metric (:func:`summarize_results`).
        source_per_seed: how the grid varied its source models (for the note).
        unchanged: :func:`count_unchanged`; adds a column when given.
    """
    by_key: dict[tuple[str, str, float, str], dict[str, GroupSummary]] = {}
    for item in summaries:
        by_key.setdefault((item.model, item.method, item.fraction, item.task), {})[item.metric] = (
            item
        )
    columns = ["model", "method", "fraction", "task", "seeds"]
    for label in ("AUC", "log-loss"):
        columns += [f"{label} mean", f"{label} std", f"{label} 95 % CI"]
    if unchanged is not None:
        columns.append("unchanged")
    rows = []
    for key, metrics in by_key.items():
        model, method, fraction, task = key
        row = [model, method, f"{fraction:g}", task, str(metrics["auc"].summary.count)]
        for metric in ("auc", "logloss"):
            summary = metrics[metric].summary
            interval = (
                f"[{summary.low:.4f}, {summary.high:.4f}]"
                if math.isfinite(summary.half_width)
                else "n/a"
            )
            row += [format_number(summary.mean), format_number(summary.std), interval]
        if unchanged is not None:
            row.append(str(unchanged[key]) if key in unchanged else "-")
        rows.append(row)
    varies = (
        "draws its own target sample and pretrains its own source model"
        if source_per_seed
        else "draws its own target sample; one source model per model is shared by all seeds"
    )
    notes = [
        f"Over seeds (each seed {varies}); 95 % CI: mean ± t_{{0.975, n-1}} · std / √n; "
        "n/a: fewer than 2 finite values.",
    ]
    if unchanged is not None:
        notes.append(
            "unchanged: seeds whose kept checkpoint is the starting source model (no epoch "
            "beat it on the target validation split); -: the method does not start from one."
        )
    return Table(columns, rows, notes=notes, align_right=[False] * 4 + [True] * 8)


def write_grid_results(out: Path, config: GridConfig, cells: list[Cell]) -> GridResult:
    """Write ``results.csv``, ``summary.csv``, ``summary.md`` and the plots of a grid folder."""
    from taa.experiments.plots import plot_metric_by_fraction

    rows = collect_results(out, cells)
    results_csv = out / RESULTS_FILE
    atomic_write_text(results_csv, _csv_text(RESULT_COLUMNS, rows))
    summaries = summarize_results(rows)
    summary_rows = [
        {
            "model": item.model,
            "method": item.method,
            "fraction": item.fraction,
            "task": item.task,
            "metric": item.metric,
            "count": item.summary.count,
            "missing": item.summary.missing,
            "mean": item.summary.mean,
            "std": item.summary.std,
            "ci_low": item.summary.low,
            "ci_high": item.summary.high,
        }
        for item in summaries
    ]
    summary_csv = out / SUMMARY_CSV
    atomic_write_text(
        summary_csv,
        _csv_text(
            (
                "model",
                "method",
                "fraction",
                "task",
                "metric",
                "count",
                "missing",
                "mean",
                "std",
                "ci_low",
                "ci_high",
            ),
            summary_rows,
        ),
    )
    finished = len({(row["model"], row["method"], row["fraction"], row["seed"]) for row in rows})
    unchanged = count_unchanged(rows)
    table = summary_table(summaries, config.source_per_seed, unchanged)
    lines = [
        f"# Grid results: {config.data.describe()}",
        "",
        f"{finished} of {len(cells)} cells finished; metrics on the target test split.",
        "",
        table.to_markdown(),
        "",
        *table.notes,
        "",
    ]
    summary_markdown = out / SUMMARY_MARKDOWN
    atomic_write_text(summary_markdown, "\n".join(lines))
    plots = []
    if rows:
        for metric in ("auc", "logloss"):
            plots.append(
                plot_metric_by_fraction(
                    summaries, out / "plots" / f"{metric}_by_fraction.png", metric
                )
            )
    return GridResult(
        out=out,
        cells=cells,
        ran=[],
        skipped=[],
        failed={},
        results_csv=results_csv,
        summary_csv=summary_csv,
        summary_markdown=summary_markdown,
        plots=plots,
        summaries=summaries,
        unchanged=unchanged,
    )

"""Reports of a run, a demo or a grid: one self-contained HTML page and a Markdown file.

The HTML page embeds its PNG plots as base64 ``data:`` URIs and carries its own CSS, so it
opens anywhere with nothing beside it. The Markdown file links the same PNGs, written to
``OUT/plots/``. :func:`write_report` recognises the folder it is given:

* a run folder (``config.json`` or ``metrics.jsonl``): final metrics, training curves, and
  the critics' Wasserstein estimates when the method has critics;
* a demo folder (``demo.json``): the table of methods, the feature projection before and
  after adaptation, then each run;
* a grid folder (``grid.json``): the summary over seeds and the metrics against target
  fraction.

A folder holding no run metrics at all (a run that has not finished an epoch, a demo or
grid none of whose runs has) is refused with a :class:`~taa.errors.DataError` before anything
is written.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taa.errors import DataError
from taa.experiments.results import (
    DEMO_MANIFEST,
    FINAL_METRICS_FILE,
    GRID_MANIFEST,
    HISTORY_FILE,
    has_run_metrics,
    is_finished,
    is_run_folder,
    read_final_metrics,
    read_history,
    read_json,
)
from taa.experiments.tables import Table, comparison_table, count_of, format_number
from taa.io import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

REPORT_FOLDER = "report"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
WASSERSTEIN_CAPTION = (
    "Each task critic's Wasserstein estimate, mean critic(source) - mean critic(target), on "
    "the target validation rows and up to 4,096 source train rows. The critic is trained to "
    "raise it and the encoder (through the adversarial term) to lower it: a falling curve "
    "means the target features move towards the source ones, or that the critic falls "
    "behind; a rising one that the critic tells the domains apart better. Near 0 the critic "
    "finds no difference; below 0 what it learned does not carry over to these rows (the "
    "distance itself is never negative). Epoch 0 is scored by untrained critics."
)

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.3em; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


@dataclass
class Image:
    """A PNG plot of a report and its caption."""

    path: Path
    caption: str


@dataclass
class Section:
    """A titled part of a report: paragraphs, tables, images, then subsections."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    subsections: list[Section] = field(default_factory=list)


@dataclass
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes:
        kind: ``run``, ``demo`` or ``grid``.
        html: the self-contained HTML page.
        markdown: the Markdown file (its images are in ``plots/`` beside it).
        images: every PNG written.
    """

    kind: str
    html: Path
    markdown: Path
    images: list[Path]


def detect_kind(folder: str | Path) -> str:
    """``demo``, ``grid`` or ``run`` for a folder, from the files it holds.

    Raises:
        DataError: the folder is none of these; the message lists what was looked for.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; give a run, demo or grid output folder")
    if (folder / DEMO_MANIFEST).is_file():
        return "demo"
    if (folder / GRID_MANIFEST).is_file():
        return "grid"
    if is_run_folder(folder):
        return "run"
    raise DataError(
        f"{folder}: not a run folder (no config.json or metrics.jsonl), a demo folder "
        f"(no {DEMO_MANIFEST}) or a grid folder (no {GRID_MANIFEST}); point to the folder "
        "that `taa pretrain`/`adapt`, `taa demo` or `taa grid` wrote"
    )


def write_report(
    folder: str | Path,
    out: str | Path | None = None,
    *,
    projection_rows: int = 2000,
    title: str | None = None,
) -> ReportResult:
    """Write ``report.html`` and ``report.md`` (with ``plots/``) for a run, demo or grid folder.

    Args:
        folder: the run, demo or grid folder.
        out: where to write; default ``FOLDER/report``.
        projection_rows: rows per domain in the demo's feature projection (0 leaves it out).
        title: page title; default names the kind and folder.

    Raises:
        DataError: the folder is no run, demo or grid folder, or holds no run metrics
            (see :func:`require_metrics`); nothing is written then.
    """
    folder = Path(folder)
    kind = detect_kind(folder)
    require_metrics(folder, kind)
    out = Path(out) if out is not None else folder / REPORT_FOLDER
    plots = out / "plots"
    builders: dict[str, Callable[[], list[Section]]] = {
        "run": lambda: run_sections(folder, plots, prefix=""),
        "demo": lambda: demo_sections(folder, plots, projection_rows),
        "grid": lambda: grid_sections(folder, plots),
    }
    sections = builders[kind]()
    title = title or f"taa {kind} report: {folder.resolve().name}"
    markdown = render_markdown(title, sections, out)
    page = render_html(title, sections)
    markdown_path, html_path = out / MARKDOWN_FILE, out / HTML_FILE
    atomic_write_text(markdown_path, markdown)
    atomic_write_text(html_path, page)
    images = [image.path for section in _walk(sections) for image in section.images]
    logger.info("wrote %s and %s (%s)", html_path, markdown_path, count_of(len(images), "plot"))
    return ReportResult(kind, html_path, markdown_path, images)


def require_metrics(folder: Path, kind: str) -> None:
    """Refuse a folder that holds no run metrics, so that no empty report is written.

    A run needs ``final_metrics.json`` or an epoch record in ``metrics.jsonl``; a demo, one
    such run among those its ``demo.json`` lists; a grid, one cell with
    ``final_metrics.json`` (the grid's tables are made of finished cells only).

    Raises:
        DataError: naming the folder, what was looked for and where, and what to run.
    """
    if kind == "run":
        if has_run_metrics(folder):
            return
        raise DataError(
            f"{folder}: no run metrics to report: no {FINAL_METRICS_FILE} and no epoch record "
            f"in {HISTORY_FILE}. The run has not finished an epoch: wait until it has, resume "
            "it with --resume, or point to a finished run folder"
        )
    if kind == "demo":
        runs = _demo_runs(folder, read_json(folder / DEMO_MANIFEST))
        if any(path.is_dir() and has_run_metrics(path) for path in runs.values()):
            return
        raise DataError(
            f"{folder}: no run metrics to report: none of the {count_of(len(runs), 'run folder')} "
            f"listed in {DEMO_MANIFEST} ({', '.join(str(path) for path in runs.values())}) holds "
            f"{FINAL_METRICS_FILE} or an epoch record in {HISTORY_FILE}; run the same "
            f"`taa demo --out {folder}` again to finish it"
        )
    from taa.experiments.grid import cell_dir

    _, cells = _grid_plan(folder)
    if any(is_finished(cell_dir(folder, cell)) for cell in cells):
        return
    raise DataError(
        f"{folder}: no run metrics to report: none of the grid's {count_of(len(cells), 'cell')} "
        f"has {FINAL_METRICS_FILE} (looked in {folder / 'runs'}/MODEL/METHOD/fFRACTION/sSEED); "
        f"run `taa grid CONFIG --out {folder}` to train them"
    )


def _demo_runs(folder: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """Method -> run folder of a demo, from its manifest's ``runs`` (relative paths)."""
    runs = manifest.get("runs", {})
    if not isinstance(runs, dict):
        raise DataError(
            f"{folder / DEMO_MANIFEST}: 'runs' must map methods to run folders, got "
            f"{type(runs).__name__}; run `taa demo --out {folder}` again"
        )
    return {str(method): folder / str(path) for method, path in runs.items()}


def _grid_plan(folder: Path) -> tuple[Any, list[Any]]:
    """The grid config and cells recorded in ``FOLDER/grid.json``."""
    from taa.experiments.grid import cells_of, grid_config_from_dict

    manifest = read_json(folder / GRID_MANIFEST)
    if not isinstance(manifest.get("config"), dict):
        raise DataError(f"{folder / GRID_MANIFEST}: no 'config' entry; run the grid again")
    config = grid_config_from_dict(manifest["config"], source=str(folder / GRID_MANIFEST))
    return config, cells_of(config)


def _walk(sections: list[Section]) -> list[Section]:
    found = []
    for section in sections:
        found.append(section)
        found.extend(_walk(section.subsections))
    return found


def _slug(text: str) -> str:
    return "".join(char if char.isalnum() else "-" for char in text).strip("-").lower() or "run"


def final_metrics_table(run_dir: Path) -> Table:
    """Per-task AUC, log-loss, group AUC, rows and positives of a finished run."""
    summary = read_final_metrics(run_dir)
    rows = [
        [
            task,
            format_number(metrics.get("auc")),
            format_number(metrics.get("logloss")),
            format_number(metrics.get("gauc")),
            format_number(_as_int(metrics.get("rows"))),
            format_number(_as_int(metrics.get("positives"))),
        ]
        for task, metrics in summary.tasks.items()
    ]
    return Table(
        ["task", "AUC", "log-loss", "group AUC", "rows", "positives"],
        rows,
        caption=f"{summary.domain} {summary.split}: best epoch {summary.best_epoch} of "
        f"{summary.epochs_run}",
        notes=["n/a: undefined, e.g. AUC on a split with one class only."],
    )


def _as_int(value: Any) -> int | float | None:
    if value is None:
        return None
    number = float(value)
    return int(number) if math.isfinite(number) else number


def run_sections(
    run_dir: Path, plots: Path, prefix: str, title: str | None = None
) -> list[Section]:
    """The section of one run folder: final metrics, training curves, Wasserstein estimates."""
    from taa.experiments.plots import plot_training_curves, plot_wasserstein

    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    method = str(config.get("config", {}).get("method", config.get("command", "")))
    model = str(config.get("model", ""))
    section = Section(title or f"Run {run_dir.name}")
    section.paragraphs.append(
        f"Folder `{run_dir}`; command {config.get('command', 'unknown')}, model "
        f"{model or 'unknown'}, method {method or 'n/a'}."
    )
    if is_finished(run_dir):
        section.tables.append(final_metrics_table(run_dir))
    else:
        section.paragraphs.append("The run has not finished: no final_metrics.json yet.")
    history = read_history(run_dir)
    label = " ".join(part for part in (method, model) if part)
    trained = [record for record in history if int(record.get("epoch", 1)) > 0]
    if history and not trained:
        section.paragraphs.append("No training epochs: the model was evaluated as it is.")
    elif history:
        stem = _slug(prefix + run_dir.name)
        curves = plot_training_curves(history, plots / f"{stem}-curves.png", title=label)
        section.images.append(Image(curves, "Training loss and validation metrics per epoch."))
        distance = plot_wasserstein(history, plots / f"{stem}-wasserstein.png", title=label)
        if distance is not None:
            section.images.append(Image(distance, WASSERSTEIN_CAPTION))
    else:
        section.paragraphs.append("No epoch history (metrics.jsonl) to plot.")
    return [section]


def demo_sections(folder: Path, plots: Path, projection_rows: int) -> list[Section]:
    """Sections of a demo folder: the methods table, the projection, then each run."""
    from taa.experiments.plots import plot_feature_projection

    manifest = read_json(folder / DEMO_MANIFEST)
    runs = _demo_runs(folder, manifest)
    finished = {
        method: read_final_metrics(path)
        for method, path in runs.items()
        if method != "pretrain" and is_finished(path)
    }
    overview = Section("Results on the target test split")
    overview.paragraphs.append(str(manifest.get("description", "")))
    if finished:
        overview.tables.append(comparison_table(finished))
    else:
        overview.paragraphs.append("No adaptation run has finished yet.")
    sections = [overview]

    source_checkpoint = runs.get("pretrain", folder / "missing") / "checkpoints" / "best.pt"
    adapted_checkpoint = runs.get("taa", folder / "missing") / "checkpoints" / "best.pt"
    dataset = manifest.get("dataset")
    if (
        projection_rows > 0
        and dataset
        and source_checkpoint.is_file()
        and (adapted_checkpoint.is_file())
    ):
        projection = Section("Task features before and after adaptation")
        path = plot_feature_projection(
            source_checkpoint,
            adapted_checkpoint,
            folder / dataset,
            manifest["source"],
            manifest["target"],
            plots / "feature-projection.png",
            rows=projection_rows,
        )
        projection.paragraphs.append(
            "Source (blue) and target (red) test rows through each task's feature extractor, "
            "projected on the two principal axes of both domains together: with the source "
            "model (left) and after taa (right). The centroid gap is the distance between "
            "the domains' mean features over their root-mean-square spread."
        )
        projection.images.append(Image(path, "PCA of task features, before and after taa."))
        sections.append(projection)

    details = Section("Runs")
    for method, path in runs.items():
        if path.is_dir():
            details.subsections.extend(
                run_sections(path, plots, prefix="demo-", title=f"{method} ({path.name})")
            )
    sections.append(details)
    return sections


def grid_sections(folder: Path, plots: Path) -> list[Section]:
    """Sections of a grid folder: the summary over seeds and the metrics against fraction."""
    from taa.experiments.grid import cell_dir, summary_table, write_grid_results

    config, cells = _grid_plan(folder)
    result = write_grid_results(folder, config, cells)
    finished = sum(is_finished(cell_dir(folder, cell)) for cell in cells)

    summary = Section(f"Grid: {config.data.describe()}")
    summary.paragraphs.append(
        f"{finished} of {count_of(len(cells), 'cell')} finished: models "
        f"{list(config.models)}, methods {list(config.methods)}, target fractions "
        f"{list(config.fractions)}, seeds {list(config.seeds)}. Metrics on the target test "
        "split."
    )
    summary.tables.append(summary_table(result.summaries, config.source_per_seed, result.unchanged))
    for path in result.plots:
        auc = path.name.startswith("auc")
        copy = plots / path.name
        with atomic_path(copy) as temporary:
            shutil.copyfile(path, temporary)
        bounds = "[0, 1]" if auc else "values of 0 or more"
        summary.images.append(
            Image(
                copy,
                f"{'AUC' if auc else 'log-loss'} against target fraction (mean over seeds, 95 % "
                f"interval). Bars are drawn clipped to {bounds}; the table gives the unclipped "
                "interval.",
            )
        )
    return [summary]


def render_markdown(title: str, sections: list[Section], out: Path) -> str:
    """Markdown with images linked relative to ``out``."""
    lines = [f"# {title}", ""]

    def add(section: Section, depth: int) -> None:
        lines.extend([f"{'#' * depth} {section.title}", ""])
        for paragraph in section.paragraphs:
            if paragraph:
                lines.extend([paragraph, ""])
        for table in section.tables:
            if table.caption:
                lines.extend([f"**{table.caption}**", ""])
            lines.extend([table.to_markdown(), ""])
            lines.extend(f"_{note}_  " for note in table.notes)
            if table.notes:
                lines.append("")
        for image in section.images:
            relative = image.path.relative_to(out).as_posix()
            lines.extend([f"![{image.caption}]({relative})", "", f"_{image.caption}_", ""])
        for subsection in section.subsections:
            add(subsection, min(depth + 1, 6))

    for section in sections:
        add(section, 2)
    return "\n".join(lines)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(title: str, sections: list[Section]) -> str:
    """A self-contained HTML page: inline CSS and the PNGs as base64 data URIs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]

    def add(section: Section, depth: int) -> None:
        parts.append(f"<h{depth}>{html.escape(section.title)}</h{depth}>")
        parts.extend(
            f"<p>{_inline_code(paragraph)}</p>" for paragraph in section.paragraphs if paragraph
        )
        parts.extend(table.to_html() for table in section.tables)
        for image in section.images:
            caption = html.escape(image.caption)
            parts.append(
                f'<figure><img src="{_data_uri(image.path)}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        for subsection in section.subsections:
            add(subsection, min(depth + 1, 6))

    for section in sections:
        add(section, 2)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _inline_code(text: str) -> str:
    """Escape ``text`` and turn Markdown backticks into ``<code>`` spans."""
    pieces = html.escape(text).split("`")
    return "".join(
        f"<code>{piece}</code>" if index % 2 else piece for index, piece in enumerate(pieces)
    )

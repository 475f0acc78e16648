"""A small table type rendered as aligned text, Markdown or HTML, for reports and the CLI."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from taa.experiments.results import RunSummary

MISSING = "n/a"


def count_of(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun``, the noun in the plural unless ``count`` is 1.

    Example:
        >>> count_of(1, "plot"), count_of(0, "plot"), count_of(3, "run folder")
        ('1 plot', '0 plots', '3 run folders')
        >>> count_of(2, "matrix", "matrices")
        '2 matrices'
    """
    if count == 1:
        return f"1 {noun}"
    return f"{count} {plural if plural is not None else noun + 's'}"


def format_number(value: float | int | str | None, digits: int = 4) -> str:
    """Format a table cell: floats with ``digits`` decimals, NaN and ``None`` as ``n/a``.

    Example:
        >>> format_number(0.123456), format_number(float("nan")), format_number(12)
        ('0.1235', 'n/a', '12')
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return MISSING if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    """Rows of already formatted cells under a header, with an optional caption and notes.

    Example:
        >>> table = Table(["method", "AUC"], [["taa", "0.7100"]])
        >>> print(table.to_markdown())
        | method | AUC |
        |---|---|
        | taa | 0.7100 |
    """

    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    align_right: Sequence[bool] | None = None

    def _right(self, index: int) -> bool:
        if self.align_right is not None:
            return bool(self.align_right[index])
        return index > 0

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown (caption and notes are left to the caller)."""
        lines = ["| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        return "\n".join(lines)

    def to_text(self) -> str:
        """Aligned plain text for a terminal: first column left, the rest right-aligned."""
        widths = [
            max([len(self.columns[index])] + [len(row[index]) for row in self.rows])
            for index in range(len(self.columns))
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                cell.rjust(widths[index]) if self._right(index) else cell.ljust(widths[index])
                for index, cell in enumerate(cells)
            ).rstrip()

        rule = "  ".join("-" * width for width in widths)
        return "\n".join([line(self.columns), rule, *(line(row) for row in self.rows)])

    def to_html(self) -> str:
        """An HTML ``<table>`` with escaped cells, its caption and notes below it."""
        parts = ["<table>"]
        if self.caption:
            parts.append(f"<caption>{html.escape(self.caption)}</caption>")
        parts.append(
            "<thead><tr>"
            + "".join(f"<th>{html.escape(column)}</th>" for column in self.columns)
            + "</tr></thead><tbody>"
        )
        for row in self.rows:
            cells = "".join(
                f'<td class="{"num" if self._right(index) else "txt"}">{html.escape(cell)}</td>'
                for index, cell in enumerate(row)
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table>")
        parts.extend(f'<p class="note">{html.escape(note)}</p>' for note in self.notes)
        return "\n".join(parts)


def comparison_table(
    runs: dict[str, RunSummary], baseline: str = "source-only", digits: int = 4
) -> Table:
    """Per-task AUC and log-loss of several runs on one split, one row per method.

    When ``baseline`` is among the runs, a ``ΔAUC`` column per task gives each method's
    AUC minus the baseline's (positive: better than the unadapted source model). The last
    column gives the epoch early stopping kept and the epochs trained (``0/3``: no epoch
    beat the starting model on the validation split).

    Args:
        runs: method name -> its final metrics, in the row order wanted.
        baseline: method the differences are taken against.
    """
    tasks: list[str] = []
    for summary in runs.values():
        tasks.extend(task for task in summary.tasks if task not in tasks)
    base = runs.get(baseline)
    columns = ["method"]
    for task in tasks:
        columns += [f"{task} AUC", f"{task} log-loss"]
        if base is not None:
            columns.append(f"{task} ΔAUC")
    rows = []
    for method, summary in runs.items():
        row = [method]
        for task in tasks:
            metrics = summary.tasks.get(task, {})
            auc = metrics.get("auc", math.nan)
            row += [format_number(auc, digits), format_number(metrics.get("logloss"), digits)]
            if base is not None:
                base_auc = base.tasks.get(task, {}).get("auc", math.nan)
                gain = auc - base_auc
                row.append(MISSING if not math.isfinite(gain) else f"{gain:+.{digits}f}")
        row.append(f"{summary.best_epoch}/{summary.epochs_run}")
        rows.append(row)
    columns.append("best/run epochs")
    notes = [f"{MISSING}: undefined, e.g. AUC on a split with one class only."]
    if base is not None:
        notes.append(f"ΔAUC: AUC minus that of {baseline} (the source model, not adapted).")
    notes.append(
        "best/run epochs: the epoch kept by early stopping on the target validation split, "
        "of those trained; 0 is the starting model, unchanged."
    )
    return Table(columns, rows, notes=notes)

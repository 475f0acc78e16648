"""Read what training runs leave behind: per-epoch history and final metrics of a run folder.

A run folder (written by :mod:`taa.train`) holds ``config.json``, ``schema.json``,
``metrics.jsonl`` (one JSON object per epoch), ``final_metrics.json`` and ``checkpoints/``.
The readers here accept a folder that is still running (no final metrics yet) and say
which file and line is at fault when one is malformed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taa.errors import DataError

HISTORY_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
CONFIG_FILE = "config.json"
#: Manifests that mark a folder as the output of ``taa demo`` or ``taa grid``.
DEMO_MANIFEST = "demo.json"
GRID_MANIFEST = "grid.json"
METRIC_NAMES = ("auc", "logloss", "gauc")


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from ``path``, raising :class:`DataError` naming the file if bad."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of ``RUN/metrics.jsonl`` in file order (empty if none yet).

    Raises:
        DataError: a line is not a JSON object; the message names the file and line.
    """
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}, line {number}: not valid JSON ({error}); the run may have been "
                "interrupted while writing: re-run it with --resume"
            ) from error
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object per epoch")
        records.append(record)
    return records


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a training run folder (config or history present)."""
    folder = Path(path)
    return (folder / CONFIG_FILE).is_file() or (folder / HISTORY_FILE).is_file()


def is_finished(run_dir: str | Path) -> bool:
    """Whether a run folder holds its final metrics (the run completed)."""
    return (Path(run_dir) / FINAL_METRICS_FILE).is_file()


def has_run_metrics(run_dir: str | Path) -> bool:
    """Whether a run folder holds anything to report: final metrics or an epoch record.

    Raises:
        DataError: ``metrics.jsonl`` holds a malformed line (see :func:`read_history`).
    """
    return is_finished(run_dir) or bool(read_history(run_dir))


def as_float(value: Any) -> float:
    """A metric value as a float; ``None`` and strings such as ``"NaN"`` become NaN."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class RunSummary:
    """The final metrics of one finished run, flattened for tables.

    Attributes:
        run_dir: the run folder.
        method: adaptation method (``taa``, ``finetune``, ...) or ``pretrain``.
        model: registry name of the model.
        domain: the domain it was evaluated on.
        split: the evaluated split.
        best_epoch: epoch of the kept checkpoint (0 for runs that did not train).
        epochs_run: epochs trained.
        tasks: per task ``{"auc", "logloss", "gauc", "rows", "positives"}`` as floats.
    """

    run_dir: Path
    method: str
    model: str
    domain: str
    split: str
    best_epoch: int
    epochs_run: int
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)


def read_final_metrics(run_dir: str | Path) -> RunSummary:
    """Read ``RUN/final_metrics.json`` into a :class:`RunSummary`.

    Raises:
        DataError: the file is missing, not JSON, or has no ``tasks`` object.
    """
    path = Path(run_dir) / FINAL_METRICS_FILE
    data = read_json(path)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise DataError(
            f"{path}: no 'tasks' object with per-task metrics; the run did not finish "
            "writing: re-run it"
        )
    flat = {
        str(task): {key: as_float(value) for key, value in metrics.items()}
        for task, metrics in tasks.items()
        if isinstance(metrics, dict)
    }
    return RunSummary(
        run_dir=Path(run_dir),
        method=str(data.get("method", "")),
        model=str(data.get("model", "")),
        domain=str(data.get("domain", "")),
        split=str(data.get("split", "")),
        best_epoch=int(data.get("best_epoch") or 0),
        epochs_run=int(data.get("epochs_run") or 0),
        tasks=flat,
    )


def history_series(history: list[dict[str, Any]], *keys: str) -> dict[str, list[float]]:
    """Per-task series of a nested history entry, e.g. ``("train", "wasserstein")``.

    Returns ``{task: [value per epoch]}``, NaN where an epoch lacks the task.

    Example:
        >>> history = [{"train": {"wasserstein": {"click": 0.5}}},
        ...            {"train": {"wasserstein": {"click": 0.25}}}]
        >>> history_series(history, "train", "wasserstein")
        {'click': [0.5, 0.25]}
    """
    entries = []
    for record in history:
        entry: Any = record
        for key in keys:
            entry = entry.get(key, {}) if isinstance(entry, dict) else {}
        entries.append(entry if isinstance(entry, dict) else {})
    tasks: list[str] = []
    for entry in entries:
        tasks.extend(task for task in entry if task not in tasks)
    return {task: [as_float(entry.get(task)) for entry in entries] for task in tasks}


def epochs_of(history: list[dict[str, Any]]) -> list[int]:
    """The epoch number of each history record (its position, 1-based, when absent)."""
    return [int(record.get("epoch", index + 1)) for index, record in enumerate(history)]

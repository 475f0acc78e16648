"""PNG plots of runs and grids, drawn with matplotlib's Agg canvas (no display needed).

* :func:`plot_training_curves`: training losses and validation AUC per epoch of one run.
* :func:`plot_wasserstein`: each task critic's Wasserstein estimate per epoch (taa runs).
* :func:`plot_metric_by_fraction`: a grid's metric against target fraction, one line per
  method with 95 % interval bars (drawn clipped to the metric's range), one panel per
  (task, model).
* :func:`plot_feature_projection`: source and target task features projected on their two
  principal axes, before (source checkpoint) and after adaptation (adapted checkpoint).

Figures are built on a private :class:`~matplotlib.figure.Figure` with an Agg canvas, never
through ``pyplot``'s global state, and written atomically. Each ``plot_*`` function has a
``*_figure`` twin that returns the figure unsaved, for callers that want to adjust or inspect
it. Epoch axes carry whole-number ticks only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from taa.errors import ConfigError, DataError
from taa.experiments.results import as_float, epochs_of, history_series
from taa.experiments.stats import GroupSummary
from taa.io import atomic_path

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DPI = 110
SOURCE_COLOR = "#1f77b4"
TARGET_COLOR = "#d62728"
METRIC_LABELS = {"auc": "AUC", "logloss": "log-loss", "gauc": "group AUC"}
#: The values each metric can take; interval bars are drawn clipped to them.
METRIC_RANGES = {"auc": (0.0, 1.0), "gauc": (0.0, 1.0), "logloss": (0.0, math.inf)}
#: What the Wasserstein plot's sign means, printed under it (see docs/method.md).
WASSERSTEIN_NOTE = "\n".join(
    (
        "estimate = mean critic(source) - mean critic(target) on evaluation rows;",
        "the critic is trained to raise it, the encoder to lower it.",
        "Falling: target features move towards the source ones (or the critic falls behind).",
        "Rising: the critic tells the domains apart better. Near 0: no difference found.",
        "Below 0: the critic does not carry over to these rows (a distance is never negative).",
    )
)


def _new_figure(rows: int, columns: int, panel_size: tuple[float, float]) -> tuple[Figure, Any]:
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, axes


def _save(figure: Figure, path: str | Path) -> Path:
    """Write a laid-out figure as PNG, atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    logger.debug("wrote plot %s", path)
    return path


def _finite(values: Sequence[float]) -> bool:
    return any(math.isfinite(value) for value in values)


def _epoch_axis(axis: Any) -> None:
    """Label an axis ``epoch`` and tick it at whole epochs only, even for a single epoch.

    ``min_n_ticks=1`` matters: with the default of 2, a run of one epoch falls back to
    fractional ticks (0.96, 0.98, ...).
    """
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.set_xlabel("epoch")


def _validation_series(history: list[dict[str, Any]], metric: str) -> dict[str, list[float]]:
    """``{task: [metric per epoch]}`` from the ``valid`` entries of a history."""
    tasks = history_series(history, "valid")
    return {
        task: [
            as_float(((record.get("valid") or {}).get(task) or {}).get(metric))
            for record in history
        ]
        for task in tasks
    }


def training_curves_figure(history: list[dict[str, Any]], title: str = "") -> Figure:
    """The figure :func:`plot_training_curves` writes, laid out but not saved.

    Raises:
        DataError: the history is empty (the run has not finished an epoch).
    """
    if not history:
        raise DataError("no epochs to plot: the run's metrics.jsonl is empty")
    epochs = epochs_of(history)
    figure, axes = _new_figure(1, 2, (5.0, 3.6))
    loss_axis, auc_axis = axes[0]

    total_values = [as_float((record.get("train") or {}).get("loss")) for record in history]
    if _finite(total_values):
        loss_axis.plot(epochs, total_values, marker="o", color="black", label="total")
    for task, values in history_series(history, "train", "task_loss").items():
        loss_axis.plot(epochs, values, marker=".", label=f"{task} task loss")
    for task, values in _validation_series(history, "logloss").items():
        if _finite(values):
            loss_axis.plot(
                epochs, values, linestyle="--", marker="x", label=f"{task} valid log-loss"
            )
    for task, values in _validation_series(history, "auc").items():
        auc_axis.plot(epochs, values, marker="o", label=f"{task} valid AUC")

    for axis in (loss_axis, auc_axis):
        _epoch_axis(axis)
    loss_axis.set_ylabel("loss")
    loss_axis.set_title("training and validation loss")
    loss_axis.legend(fontsize="small")
    auc_axis.set_ylabel("AUC")
    auc_axis.set_title("validation AUC")
    if any(_finite(list(line.get_ydata())) for line in auc_axis.get_lines()):
        auc_axis.legend(fontsize="small")
    else:
        auc_axis.text(
            0.5,
            0.5,
            "AUC undefined in every epoch\n(a validation split with one class)",
            ha="center",
            va="center",
            transform=auc_axis.transAxes,
            color="grey",
        )
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_training_curves(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Plot training losses (left) and validation AUC per task (right) against epochs.

    Args:
        history: records of a run's ``metrics.jsonl`` (see :func:`read_history`).
        path: PNG file to write.
        title: figure title, e.g. the run's method and model.

    Raises:
        DataError: the history is empty (the run has not finished an epoch).
    """
    if not history:
        raise DataError(f"no epochs to plot for {path}: the run's metrics.jsonl is empty")
    return _save(training_curves_figure(history, title), path)


def wasserstein_figure(history: list[dict[str, Any]], title: str = "") -> Figure | None:
    """The figure :func:`plot_wasserstein` writes, or ``None`` without a finite estimate.

    The y axis is ``mean critic(source) - mean critic(target)`` on evaluation features
    (docs/method.md); a note under the plot says what its sign and trend mean.
    """
    series = history_series(history, "train", "wasserstein")
    series = {task: values for task, values in series.items() if _finite(values)}
    if not series:
        return None
    epochs = epochs_of(history)
    figure, axes = _new_figure(1, 1, (6.0, 5.0))
    axis = axes[0][0]
    for task, values in series.items():
        axis.plot(epochs, values, marker="o", label=f"{task} critic")
    axis.axhline(0.0, color="grey", linewidth=0.8)
    _epoch_axis(axis)
    axis.set_ylabel("critic(source) - critic(target)")
    axis.set_title("critic estimate of the source-target Wasserstein distance")
    axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.text(0.5, 0.01, WASSERSTEIN_NOTE, ha="center", va="bottom", fontsize="x-small")
    figure.tight_layout(rect=(0.0, 0.17, 1.0, 1.0))
    return figure


def plot_wasserstein(
    history: list[dict[str, Any]], path: str | Path, title: str = ""
) -> Path | None:
    """Plot each task critic's Wasserstein estimate per epoch.

    The estimate is ``mean critic(source) - mean critic(target)``. The critic is trained to
    make it large and the encoder's adversarial term to make it small, so a falling curve
    means the target features are moving towards the source ones and a rising one that
    the critic separates the domains better. Near 0 the critic finds no difference; below
    0 what it learned on training batches does not carry over to the evaluation rows (the
    distance itself is never negative). The epoch-0 value comes from untrained critics.

    Returns:
        The PNG path, or ``None`` when the history holds no finite estimate (a method
        without critics, such as finetune); nothing is written then.
    """
    figure = wasserstein_figure(history, title)
    return None if figure is None else _save(figure, path)


def clipped_errors(
    means: Sequence[float], half_widths: Sequence[float], low: float, high: float
) -> tuple[list[float], list[float]]:
    """Lengths below and above each mean of interval bars clipped to ``[low, high]``.

    A NaN half width (fewer than two seeds) draws no bar.

    Example:
        >>> below, above = clipped_errors([0.98, 0.5], [0.05, 0.1], 0.0, 1.0)
        >>> [round(value, 9) for value in below + above]  # bars 0.93..1.0 and 0.4..0.6
        [0.05, 0.1, 0.02, 0.1]
    """
    below, above = [], []
    for mean, half_width in zip(means, half_widths, strict=True):
        width = half_width if math.isfinite(half_width) else 0.0
        below.append(max(mean - max(mean - width, low), 0.0))
        above.append(max(min(mean + width, high) - mean, 0.0))
    return below, above


def metric_by_fraction_figure(summaries: Sequence[GroupSummary], metric: str = "auc") -> Figure:
    """The figure :func:`plot_metric_by_fraction` writes, laid out but not saved.

    Raises:
        DataError: no summary holds ``metric``.
    """
    rows = [item for item in summaries if item.metric == metric]
    if not rows:
        raise DataError(f"no {metric!r} results to plot")
    low, high = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    tasks = list(dict.fromkeys(item.task for item in rows))
    models = list(dict.fromkeys(item.model for item in rows))
    methods = list(dict.fromkeys(item.method for item in rows))
    fractions = sorted({item.fraction for item in rows})
    figure, axes = _new_figure(len(tasks), len(models), (4.2, 3.2))
    for row_index, task in enumerate(tasks):
        for column_index, model in enumerate(models):
            axis = axes[row_index][column_index]
            for method_index, method in enumerate(methods):
                dodge = 1.0 + 0.06 * (method_index - (len(methods) - 1) / 2) / max(
                    len(methods) - 1, 1
                )
                points = sorted(
                    (item.fraction, item.summary)
                    for item in rows
                    if item.task == task and item.model == model and item.method == method
                )
                if not points:
                    continue
                means = [summary.mean for _, summary in points]
                below, above = clipped_errors(
                    means, [summary.half_width for _, summary in points], low, high
                )
                axis.errorbar(
                    [fraction * dodge for fraction, _ in points],
                    means,
                    yerr=[below, above],
                    marker="o",
                    capsize=3,
                    label=method,
                )
            if fractions and fractions[-1] > 10 * fractions[0]:
                axis.set_xscale("log")
            axis.set_xlabel("target fraction")
            axis.set_ylabel(METRIC_LABELS.get(metric, metric))
            axis.set_title(f"{model}: {task}", fontsize="medium")
            axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_metric_by_fraction(
    summaries: Sequence[GroupSummary], path: str | Path, metric: str = "auc"
) -> Path:
    """Plot a metric's mean against target fraction, one line per method, with 95 % bars.

    One panel per (task, model): tasks down, models across. The fraction axis is
    logarithmic when the fractions span more than a factor of 10. The methods' points are
    drawn a little apart along that axis (up to 3 % of the fraction either way) so that their
    bars do not hide each other. Bars are drawn clipped to the values the metric can take
    (``[0, 1]`` for AUC and group AUC, ``[0, inf)`` for log-loss); a t interval of a few
    seeds can reach past them, and the tables keep the unclipped bounds.

    Raises:
        DataError: no summary holds ``metric``.
    """
    if not any(item.metric == metric for item in summaries):
        raise DataError(f"no {metric!r} results to plot for {path}")
    return _save(metric_by_fraction_figure(summaries, metric), path)


@dataclass
class Projection:
    """Source and target features of one task projected on two principal axes.

    Attributes:
        source: projected source features ``[R_s, 2]``.
        target: projected target features ``[R_t, 2]``.
        explained: fraction of the total variance carried by each axis ``[2]``.
        centroid_gap: distance between the source and target mean features in the full
            D-dimensional space, divided by the root-mean-square distance of all features
            to their common mean (0 when the two clouds share a centre).
    """

    source: torch.Tensor
    target: torch.Tensor
    explained: torch.Tensor
    centroid_gap: float


def principal_axes(
    features: torch.Tensor, components: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal axes of ``features`` ``[R, D]`` via ``torch.linalg.svd``.

    Returns:
        ``(axes [components, D], variances [components])``: the unit directions of largest
        variance and the variance of the data along each (sample variance, ``R - 1``).
        When ``D < components`` the missing axes are zero with zero variance.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise DataError(
            f"principal axes need a [R, D] matrix with R >= 2 rows, got shape "
            f"{tuple(features.shape)}"
        )
    data = features.double()
    centred = data - data.mean(dim=0, keepdim=True)
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    keep = min(components, right.shape[0])
    axes = torch.zeros(components, data.shape[1], dtype=torch.float64)
    variances = torch.zeros(components, dtype=torch.float64)
    axes[:keep] = right[:keep]
    variances[:keep] = singular[:keep] ** 2 / (data.shape[0] - 1)
    return axes, variances


def project_pair(source: torch.Tensor, target: torch.Tensor) -> Projection:
    """Project source ``[R_s, D]`` and target ``[R_t, D]`` features on their joint principal axes.

    The axes are fitted on both domains together, so the picture shows how far apart the
    two clouds lie in the directions where the features vary most.
    """
    combined = torch.cat([source, target]).double()
    axes, variances = principal_axes(combined)
    centre = combined.mean(dim=0, keepdim=True)
    total_variance = combined.var(dim=0).sum().clamp_min(1e-12)
    spread = (combined - centre).pow(2).sum(dim=1).mean().sqrt().clamp_min(1e-12)
    gap = (source.double().mean(dim=0) - target.double().mean(dim=0)).norm() / spread
    return Projection(
        source=(source.double() - centre) @ axes.T,
        target=(target.double() - centre) @ axes.T,
        explained=variances / total_variance,
        centroid_gap=float(gap),
    )


def plot_projections(
    tasks: Sequence[str],
    before: Sequence[Projection],
    after: Sequence[Projection],
    path: str | Path,
    labels: tuple[str, str] = ("before adaptation", "after adaptation"),
) -> Path:
    """Draw one row per task: its ``before`` projection on the left, ``after`` on the right."""
    if not (len(tasks) == len(before) == len(after)) or not tasks:
        raise ConfigError(
            f"projection plot needs one before and one after projection per task; got "
            f"{len(tasks)} tasks, {len(before)} before, {len(after)} after"
        )
    figure, axes = _new_figure(len(tasks), 2, (4.4, 3.8))
    for row_index, task in enumerate(tasks):
        for column_index, (label, projection) in enumerate(
            zip(labels, (before[row_index], after[row_index]), strict=True)
        ):
            axis = axes[row_index][column_index]
            for name, points, color in (
                ("source", projection.source, SOURCE_COLOR),
                ("target", projection.target, TARGET_COLOR),
            ):
                axis.scatter(
                    points[:, 0].numpy(),
                    points[:, 1].numpy(),
                    s=4,
                    alpha=0.35,
                    color=color,
                    label=name,
                    linewidths=0,
                )
            explained = projection.explained.tolist()
            axis.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
            axis.set_ylabel(f"PC2 ({explained[1]:.0%})")
            axis.set_title(
                f"{task}, {label}\ncentroid gap {projection.centroid_gap:.3f}", fontsize="medium"
            )
            axis.legend(fontsize="small", markerscale=3)
    figure.tight_layout()
    return _save(figure, path)


def task_features(
    model: torch.nn.Module, split: Any, rows: int, seed: int, batch_size: int = 4096
) -> list[torch.Tensor]:
    """Features entering each task's tower for up to ``rows`` rows of ``split``.

    Args:
        model: a :class:`~taa.models.base.MultiTaskModel`; it is put in eval mode.
        split: a :class:`~taa.data.batches.TensorSplit`.
        rows: how many rows to take, drawn by a seeded permutation (all when fewer).
        seed: seed of that permutation.

    Returns:
        One tensor ``[R, D]`` per task, ``R = min(rows, len(split))``.
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(split), generator=generator)[:rows]
    subset = split.subset(chosen)
    model.eval()
    device = next(model.parameters()).device
    pieces: list[list[torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(subset), batch_size):
            batch = subset.slice(start, start + batch_size).to(device)
            output = model(batch.categorical, batch.numerical)
            pieces.append([feature.float().cpu() for feature in output.features])
    return [torch.cat([piece[task] for piece in pieces]) for task in range(len(pieces[0]))]


def plot_feature_projection(
    source_checkpoint: str | Path,
    adapted_checkpoint: str | Path,
    dataset: str | Path,
    source_domain: str,
    target_domain: str,
    path: str | Path,
    *,
    split: str = "test",
    rows: int = 2000,
    seed: int = 0,
) -> Path:
    """Plot source and target task features before and after adaptation, per task.

    Both checkpoints are scored on the same rows: up to ``rows`` of the source domain's
    ``split`` and as many of the target domain's.

    Args:
        source_checkpoint: checkpoint of the pretrained source model (``best.pt``).
        adapted_checkpoint: checkpoint of the adapted model.
        dataset: prepared dataset folder holding both domains.
        source_domain: source domain name.
        target_domain: target domain name.
        path: PNG file to write.
        split: which split of each domain to draw rows from.
        rows: rows per domain (default 2000).
        seed: seed of the row choice.
    """
    from taa.data.batches import load_split
    from taa.data.schema import Schema
    from taa.train import load_checkpoint

    schema = Schema.load(dataset)
    source_split = load_split(dataset, source_domain, split, schema)
    target_split = load_split(dataset, target_domain, split, schema)
    projections: dict[str, list[Projection]] = {}
    for label, checkpoint in (("before", source_checkpoint), ("after", adapted_checkpoint)):
        model, _ = load_checkpoint(checkpoint)
        source_features = task_features(model, source_split, rows, seed)
        target_features = task_features(model, target_split, rows, seed + 1)
        projections[label] = [
            project_pair(source, target)
            for source, target in zip(source_features, target_features, strict=True)
        ]
    return plot_projections(list(schema.tasks), projections["before"], projections["after"], path)

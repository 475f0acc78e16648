"""Ranking and calibration metrics over whole splits: AUC, log-loss and group AUC.

Every metric here takes all the rows of a split at once. AUC is never averaged over
batches or chunks: the AUC of a union is not the mean of the AUCs of its parts.

* AUC is the Mann-Whitney rank statistic with tied scores given their average rank, so
  a tie between a positive and a negative counts one half.
* Group AUC (GAUC) is the AUC computed inside each group (``search_id``, one result
  page) and averaged over the groups that hold both classes, each weighted by its
  number of rows (impressions): ``sum_g rows_g * auc_g / sum_g rows_g``.
* Log-loss is the mean binary cross-entropy with probabilities clipped to
  ``[1e-7, 1 - 1e-7]``.

An undefined metric (AUC of a split with one class, GAUC without any group holding both
classes) is ``nan`` and raises an :class:`~taa.errors.UndefinedMetricWarning` naming the
task and the split; it never raises an error. Each such warning is given once per process:
the same metric of the same task on the same split, evaluated again (every epoch, by every
run of a grid), is only logged at DEBUG level. Like Python's own once-only warnings, the
record starts afresh when the warning filters change (``warnings.catch_warnings``,
``warnings.simplefilter``), and :func:`reset_undefined_metric_warnings` clears it.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from taa.errors import DataError, UndefinedMetricWarning

logger = logging.getLogger(__name__)

PROBABILITY_CLIP = 1e-7

# Messages of the undefined-metric warnings given so far, and the warning filters they were
# given under (the list object and its contents): a change of filters empties the record.
_given_lock = threading.Lock()
_given: set[str] = set()
_given_under: tuple[list[Any] | None, tuple[Any, ...]] = (None, ())


def reset_undefined_metric_warnings() -> None:
    """Forget which undefined-metric warnings were given, so each is given once more."""
    global _given_under
    with _given_lock:
        _given.clear()
        _given_under = (None, ())


def _warn_once(message: str) -> None:
    """Raise an :class:`UndefinedMetricWarning` the first time ``message`` comes up.

    Repeats are logged at DEBUG level. The record is emptied when ``warnings.filters`` has
    been replaced or changed since the last call, as Python does with its own registries.
    """
    global _given_under
    filters = warnings.filters
    with _given_lock:
        if _given_under[0] is not filters or _given_under[1] != tuple(filters):
            _given.clear()
            _given_under = (filters, tuple(filters))
        first = message not in _given
        _given.add(message)
    if first:
        warnings.warn(message, UndefinedMetricWarning, stacklevel=3)
    else:
        logger.debug("again (warned once already): %s", message)


def _as_vectors(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise DataError(
            f"labels ({labels.size} rows) and scores ({scores.size} rows) differ in length"
        )
    if labels.size and not np.isin(labels, (0.0, 1.0)).all():
        bad = labels[~np.isin(labels, (0.0, 1.0))][:3].tolist()
        raise DataError(f"labels must be 0 or 1, found {bad}; check the split's label columns")
    if not np.isfinite(scores).all():
        raise DataError(
            f"{int((~np.isfinite(scores)).sum())} scores are not finite; the model diverged "
            "(lower the learning rate) or the input holds NaN"
        )
    return labels, scores


def _grouped_auc(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUC of each group with both classes, and that group's row count.

    Rows are sorted by (group, score); each run of equal (group, score) gets the average
    of the ranks it spans, counted from 1 inside its group. Then per group
    ``auc = (sum of positive ranks - P (P + 1) / 2) / (P N)``.
    """
    order = np.lexsort((scores, groups))
    sorted_groups = groups[order]
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    count = labels.size

    new_group = np.ones(count, dtype=bool)
    new_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
    new_tie = new_group.copy()
    new_tie[1:] |= sorted_scores[1:] != sorted_scores[:-1]

    # Average 1-based position of each tie run, then shifted to start at 1 in its group.
    tie_starts = np.flatnonzero(new_tie)
    tie_stops = np.append(tie_starts[1:], count)
    run_rank = (tie_starts + tie_stops + 1) / 2.0
    rank = np.repeat(run_rank, tie_stops - tie_starts)
    group_starts = np.flatnonzero(new_group)
    group_sizes = np.diff(np.append(group_starts, count))
    rank -= np.repeat(group_starts, group_sizes)

    group_index = np.cumsum(new_group) - 1
    positives = np.bincount(group_index, weights=sorted_labels, minlength=group_starts.size)
    positive_rank_sum = np.bincount(
        group_index, weights=rank * sorted_labels, minlength=group_starts.size
    )
    negatives = group_sizes - positives
    both = (positives > 0) & (negatives > 0)
    auc = (positive_rank_sum[both] - positives[both] * (positives[both] + 1) / 2.0) / (
        positives[both] * negatives[both]
    )
    return auc, group_sizes[both].astype(np.float64)


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve over all rows; ``nan`` when only one class is present.

    Args:
        labels: 0/1 labels ``[R]``.
        scores: scores or probabilities ``[R]``; only their order matters.

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
        >>> roc_auc([0, 1], [0.5, 0.5])  # a tie counts one half
        0.5
    """
    labels, scores = _as_vectors(labels, scores)
    auc, _ = _grouped_auc(labels, scores, np.zeros(labels.size, dtype=np.int64))
    return float(auc[0]) if auc.size else math.nan


def group_auc(labels: Any, scores: Any, groups: Any) -> float:
    """Impression-weighted mean of per-group AUC over the groups holding both classes.

    Args:
        labels: 0/1 labels ``[R]``.
        scores: scores ``[R]``.
        groups: group key ``[R]`` (``search_id``); any integer values, in any order.

    Returns:
        ``sum_g rows_g * auc_g / sum_g rows_g`` over groups with a positive and a
        negative; ``nan`` when there is no such group.

    Example:
        Page 7 ranks its click first (AUC 1, 2 rows), page 8 last (AUC 0, 3 rows):

        >>> group_auc([0, 1, 1, 0, 0], [0.2, 0.9, 0.1, 0.3, 0.5], [7, 7, 8, 8, 8])
        0.4
    """
    labels, scores = _as_vectors(labels, scores)
    groups = np.asarray(groups).reshape(-1)
    if groups.shape != labels.shape:
        raise DataError(f"groups ({groups.size} rows) and labels ({labels.size} rows) differ")
    auc, weights = _grouped_auc(labels, scores, groups)
    if not auc.size:
        return math.nan
    return float(np.sum(auc * weights) / np.sum(weights))


def log_loss(labels: Any, probabilities: Any) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[1e-7, 1 - 1e-7]``.

    Example:
        >>> round(log_loss([1, 0], [0.8, 0.4]), 6)  # -(ln 0.8 + ln 0.6) / 2
        0.366985
    """
    labels, probabilities = _as_vectors(labels, probabilities)
    if not labels.size:
        return math.nan
    clipped = np.clip(probabilities, PROBABILITY_CLIP, 1.0 - PROBABILITY_CLIP)
    losses = -(labels * np.log(clipped) + (1.0 - labels) * np.log1p(-clipped))
    return float(losses.mean())


def task_metrics(
    labels: Any,
    probabilities: Any,
    groups: Any,
    tasks: Sequence[str],
    *,
    where: str = "",
    warn: bool = True,
) -> dict[str, dict[str, float | int]]:
    """AUC, log-loss, group AUC, rows and positives for each task of a whole split.

    Args:
        labels: ``[R, T]`` 0/1 labels in task order.
        probabilities: ``[R, T]`` predicted probabilities.
        groups: ``[R]`` group key.
        tasks: the T task names.
        where: words naming the split in warnings (``"B/test"``).
        warn: raise :class:`~taa.errors.UndefinedMetricWarning` for undefined metrics,
            once per process for each split, task and metric (see the module's notes).

    Returns:
        ``{task: {"auc", "logloss", "gauc", "rows", "positives"}}``.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probabilities.shape or labels.shape[1] != len(tasks):
        raise DataError(
            f"labels {labels.shape} and probabilities {probabilities.shape} must both be "
            f"[rows, {len(tasks)}] for tasks {list(tasks)}"
        )
    if np.isnan(labels).any():
        raise DataError(
            f"{where or 'the split'} has rows without labels; evaluation needs the task "
            f"columns {list(tasks)} (use `taa predict` to score unlabelled rows)"
        )
    groups = np.asarray(groups).reshape(-1)
    results: dict[str, dict[str, float | int]] = {}
    for index, task in enumerate(tasks):
        task_labels = labels[:, index]
        task_scores = probabilities[:, index]
        positives = int(task_labels.sum())
        auc = roc_auc(task_labels, task_scores)
        gauc = group_auc(task_labels, task_scores, groups)
        if warn and math.isnan(auc):
            _warn_once(
                f"AUC of task {task!r} is undefined on {where or 'this split'}: all "
                f"{task_labels.size} rows have label {int(task_labels[0]) if positives else 0} "
                "(one class only); reported as NaN"
            )
        elif warn and math.isnan(gauc):
            _warn_once(
                f"group AUC of task {task!r} is undefined on {where or 'this split'}: no "
                "group holds both a positive and a negative; reported as NaN"
            )
        results[task] = {
            "auc": auc,
            "logloss": log_loss(task_labels, task_scores),
            "gauc": gauc,
            "rows": int(task_labels.size),
            "positives": positives,
        }
    return results

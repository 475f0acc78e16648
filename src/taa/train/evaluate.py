"""Honest evaluation: score every row of a split, then compute each metric once over all rows.

Predictions are collected batch by batch under ``torch.inference_mode`` and concatenated;
AUC, log-loss and group AUC are computed on the whole split (see :mod:`taa.train.metrics`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from taa.data.batches import Batch, TensorSplit, epoch_slices, load_split
from taa.data.schema import Schema
from taa.data.shards import load_split_shard
from taa.distributed import current, gather_scores, start_processes
from taa.errors import DataError
from taa.io import atomic_write_json
from taa.models.base import MultiTaskModel
from taa.train.checkpoint import check_schema, load_checkpoint
from taa.train.config import EvaluateConfig
from taa.train.metrics import task_metrics
from taa.train.runtime import apply_threads, autocast, resolve_device

logger = logging.getLogger(__name__)


def fetch(split: TensorSplit | None, index: torch.Tensor | Batch, device: torch.device) -> Any:
    """Rows ``index`` of ``split`` as a :class:`~taa.data.batches.Batch` on ``device``.

    A plan over streamed data hands the batch itself; it is only moved to ``device``.
    """
    if isinstance(index, Batch):
        return index.to(device, non_blocking=True)
    if split is None:
        raise TypeError("fetch needs a split to take row indices from")
    index = index.to(split.categorical.device, non_blocking=True)
    return split.take(index).to(device, non_blocking=True)


def collect_outputs(
    model: MultiTaskModel,
    split: TensorSplit,
    *,
    device: torch.device,
    batch_size: int = 8192,
    precision: str = "fp32",
    with_features: bool = False,
) -> tuple[np.ndarray, list[torch.Tensor] | None]:
    """Probabilities of every row of ``split``, and optionally every task's features.

    The model is put in eval mode and run under ``torch.inference_mode``; each batch's
    outputs stay on the device and are copied to the host once, at the end.

    Returns:
        probabilities ``[R, T]`` (float64 NumPy) and, with ``with_features``, one float32
        tensor ``[R, D]`` per task (on ``device``).
    """
    model.eval()
    probabilities: list[torch.Tensor] = []
    features: list[list[torch.Tensor]] = [[] for _ in range(model.num_tasks)]
    with torch.inference_mode():
        for start, stop in epoch_slices(len(split), batch_size, training=False):
            batch = split.slice(start, stop).to(device, non_blocking=True)
            with autocast(device, precision):
                output = model(batch.categorical, batch.numerical)
            probabilities.append(output.probabilities.float())
            if with_features:
                for task, feature in enumerate(output.features):
                    features[task].append(feature.float())
        if not probabilities:
            raise DataError("cannot score an empty split (0 rows)")
        stacked = torch.cat(probabilities).cpu().numpy().astype(np.float64)
        if not with_features:
            return stacked, None
        return stacked, [torch.cat(pieces) for pieces in features]


def evaluate_model(
    model: MultiTaskModel,
    split: TensorSplit,
    tasks: tuple[str, ...] | list[str],
    *,
    device: torch.device,
    batch_size: int = 8192,
    precision: str = "fp32",
    where: str = "",
    warn: bool = True,
) -> dict[str, dict[str, float | int]]:
    """Per task ``auc``, ``logloss``, ``gauc``, ``rows``, ``positives`` of ``model`` on ``split``.

    A task whose labels are all one class gets ``nan`` AUC and an
    :class:`~taa.errors.UndefinedMetricWarning` naming the task (when ``warn``), given once
    per process for each split and task: evaluating the split again only logs it at DEBUG
    level (see :mod:`taa.train.metrics`).

    Under data-parallel training ``split`` is this rank's share of the rows: the scores,
    labels and groups of every rank are gathered first, and the metrics are those of all
    rows together, the same on every rank.
    """
    context = current()
    if len(split) == 0 and context.enabled:
        probabilities = np.zeros((0, len(tasks)))
    else:
        probabilities, _ = collect_outputs(
            model, split, device=device, batch_size=batch_size, precision=precision
        )
    probabilities, labels, groups = gather_scores(
        probabilities, split.labels, split.groups, context
    )
    return task_metrics(
        labels, probabilities, groups, tasks, where=where, warn=warn and context.is_main
    )


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on one split of a prepared dataset (``taa evaluate``).

    Returns:
        ``{"checkpoint", "model", "domain", "split", "tasks": {task: {"auc", "logloss",
        "gauc", "rows", "positives"}}}``; also written to ``config.output`` if given.

    Raises:
        SchemaMismatchError: the checkpoint was trained on another schema.
    """
    apply_threads(config.threads)
    _, device = start_processes(resolve_device(config.device))
    schema = Schema.load(config.dataset)
    model, metadata = load_checkpoint(config.checkpoint, map_location=device)
    check_schema(metadata, schema, checkpoint=config.checkpoint, dataset=config.dataset)
    split = load_rows(config.dataset, config.domain, config.split, schema)
    logger.info(
        "evaluating %s on %s/%s (%d rows)",
        config.checkpoint,
        config.domain,
        config.split,
        len(split),
    )
    tasks = evaluate_model(
        model,
        split,
        schema.tasks,
        device=device,
        batch_size=config.batch_size,
        precision=config.precision,
        where=f"{config.domain}/{config.split}",
    )
    result = {
        "checkpoint": str(config.checkpoint),
        "model": metadata["model_name"],
        "domain": config.domain,
        "split": config.split,
        "tasks": tasks,
    }
    if config.output is not None and current().is_main:
        atomic_write_json(config.output, result)
        logger.info("metrics written to %s", config.output)
    return result


def load_rows(dataset: Any, domain: str, split: str, schema: Schema) -> TensorSplit:
    """A split to score: whole in one process, this rank's row range under torchrun."""
    context = current()
    if not context.enabled:
        return load_split(dataset, domain, split, schema)
    return load_split_shard(
        dataset, domain, split, rank=context.rank, world_size=context.world_size, schema=schema
    )


def selection_score(valid: dict[str, dict[str, float | int]]) -> float:
    """The number early stopping maximises.

    It is the mean of the tasks' validation AUCs weighted by ``min(positives,
    negatives)``, over the tasks whose AUC is defined. The standard error of an AUC shrinks
    with the size of its smaller class, so this weighting (inverse-variance, up to a
    constant) keeps a task with one or two positives in a small target sample from
    deciding the epoch alone. When no task has a defined AUC, the score is minus the mean
    log-loss.

    Example:
        >>> selection_score({
        ...     "click": {"auc": 0.7, "logloss": 0.1, "rows": 100, "positives": 30},
        ...     "conversion": {"auc": 0.2, "logloss": 0.1, "rows": 100, "positives": 1},
        ... })  # (0.7 * 30 + 0.2 * 1) / 31
        0.683870967741...
    """
    aucs, weights = [], []
    for item in valid.values():
        auc = float(item["auc"])
        if not np.isfinite(auc):
            continue
        rows = int(item.get("rows", 0))
        positives = int(item.get("positives", 0))
        aucs.append(auc)
        weights.append(max(min(positives, rows - positives), 1) if rows else 1)
    if aucs:
        return float(np.average(aucs, weights=weights))
    losses = [float(item["logloss"]) for item in valid.values()]
    return -float(np.mean(losses)) if losses else float("nan")

"""Pieces shared by ``pretrain`` and ``adapt``: data placement, optimizers, final scores."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch

from taa.data.batches import TensorSplit
from taa.data.schema import Schema
from taa.distributed import broadcast_module, check_resumable, current, on_main
from taa.errors import ConfigError, DataError
from taa.models.base import ModelOutput, MultiTaskModel
from taa.tracking import Tracker, make_tracker
from taa.train.checkpoint import load_checkpoint
from taa.train.config import RunOptions
from taa.train.evaluate import evaluate_model, load_rows
from taa.train.runs import RunFolder

logger = logging.getLogger(__name__)

#: Splits up to this size are copied to the GPU once, so a step indexes on the device.
DEVICE_RESIDENT_BYTES = 2 * 1024**3


def split_bytes(split: TensorSplit) -> int:
    tensors = (split.categorical, split.numerical, split.labels, split.groups)
    return sum(item.numel() * item.element_size() for item in tensors)


def place(split: TensorSplit, device: torch.device) -> TensorSplit:
    """``split`` on ``device`` when it is a GPU and the split is small enough, else as is.

    A large split stays in host memory and each batch is copied when it is drawn.
    """
    if device.type == "cpu" or split_bytes(split) > DEVICE_RESIDENT_BYTES:
        return split
    moved = split.to(device)
    return TensorSplit(moved.categorical, moved.numerical, moved.labels, moved.groups)


def require_rows(split: TensorSplit, minimum: int, where: str, fix: str) -> None:
    if len(split) < minimum:
        raise DataError(f"{where} has {len(split)} rows; at least {minimum} are needed; {fix}")


def require_labels(split: TensorSplit, where: str) -> None:
    if torch.isnan(split.labels).any():
        raise DataError(
            f"{where} has rows without task labels; training and validation need labelled "
            "rows (re-run `taa prepare` on a labelled file)"
        )


def task_weight_tensor(options: RunOptions, tasks: tuple[str, ...]) -> torch.Tensor:
    """``--task-weights`` as a ``[T]`` tensor; all ones when empty."""
    if not options.task_weights:
        return torch.ones(len(tasks))
    if len(options.task_weights) != len(tasks):
        raise ConfigError(
            f"option --task-weights got {len(options.task_weights)} weights "
            f"{list(options.task_weights)} for {len(tasks)} tasks {list(tasks)}; give one "
            "weight per task, in task order"
        )
    return torch.tensor(options.task_weights, dtype=torch.float32)


def check_run_options(options: RunOptions, schema: Schema, domain: str) -> None:
    """Check the options that the schema and the dataset folder decide, before a run folder
    is made: ``--task-weights`` (one per task) and ``--eval-split`` (a split of ``domain``).

    Raises:
        ConfigError: a wrong number of task weights, or an evaluation split that does not
            exist (the message lists the domain's splits).
    """
    from taa.data.batches import split_path

    task_weight_tensor(options, schema.tasks)
    if schema.domains and domain not in schema.domains:
        return  # the data loader names the unknown domain with the dataset's domains
    path = split_path(options.dataset, domain, options.eval_split)
    if not path.is_file():
        domain_dir = Path(options.dataset) / domain
        available = sorted(
            item.relative_to(domain_dir).with_suffix("").as_posix()
            for item in domain_dir.rglob("*.parquet")
        )
        raise ConfigError(
            f"option --eval-split got {options.eval_split!r}, but domain {domain!r} has no such "
            f"split ({path} does not exist); choose one of {available or 'none'}"
        )


def adam(parameters: Any, lr: float, weight_decay: float = 0.0, **kwargs: Any) -> torch.optim.Adam:
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, **kwargs)


def compiled(model: MultiTaskModel, enabled: bool) -> Any:
    """``torch.compile(model)`` when asked; the uncompiled model is what gets saved."""
    if not enabled:
        return model
    logger.info("compiling the model with torch.compile (first steps are slow)")
    return torch.compile(model)


def check_output(model: MultiTaskModel, output: ModelOutput, rows: int) -> None:
    """Refuse a model whose output breaks the interface the methods rely on."""
    tasks = model.num_tasks
    if tuple(output.logits.shape) != (rows, tasks) or len(output.features) != tasks:
        raise ConfigError(
            f"model {type(model).__name__} returned logits {tuple(output.logits.shape)} and "
            f"{len(output.features)} feature tensors for {rows} rows and {tasks} tasks; "
            f"expected [{rows}, {tasks}] and {tasks}"
        )


def open_run(
    run_dir: Path, record: dict[str, Any], schema: Schema, options: RunOptions
) -> tuple[RunFolder, bool, Tracker]:
    """Create (or reopen with ``--resume``) the run folder, write its config, start tracking.

    Only rank 0 touches the folder; if it fails, every rank raises its error. Returns the
    folder, whether to resume, and the ``--track`` tracker (a no-op on other ranks).
    """
    context = current()
    check_resumable(context, resume=options.resume)

    def create() -> tuple[RunFolder, bool, Tracker]:
        run, resuming = RunFolder.open(
            run_dir, record, resume=options.resume, overwrite=options.overwrite
        )
        run.write_config(record, schema)
        tracker = make_tracker(options.track, run.path)
        tracker.log_params(record)
        return run, resuming, tracker

    opened = on_main(create, context)
    if opened is None:
        return RunFolder(run_dir), False, make_tracker("none", run_dir)
    return opened


def final_evaluation(
    run: RunFolder,
    schema: Schema,
    options: RunOptions,
    *,
    domain: str,
    device: torch.device,
    summary: dict[str, Any],
    trained: MultiTaskModel | None = None,
) -> dict[str, Any]:
    """Score the best checkpoint on ``domain``'s evaluation split; write final_metrics.json.

    Under torchrun rank 0 loads the checkpoint and broadcasts its weights into a copy of
    ``trained`` (the model as trained) on every rank, so no shared folder is needed;
    each rank scores its share of the split and the metrics cover all rows.
    """
    context = current()
    split = load_rows(options.dataset, domain, options.eval_split, schema)
    if context.enabled and trained is not None:
        model = copy.deepcopy(trained)
        if context.is_main:
            loaded, _ = load_checkpoint(run.best_checkpoint, map_location=device)
            model.load_state_dict(loaded.state_dict())
        broadcast_module(model, context)
        model.eval()
    else:
        model, _ = load_checkpoint(run.best_checkpoint, map_location=device)
    tasks = evaluate_model(
        model,
        split,
        schema.tasks,
        device=device,
        batch_size=max(options.batch_size, 8192),
        precision=options.precision,
        where=f"{domain}/{options.eval_split}",
    )
    final = {**summary, "domain": domain, "split": options.eval_split, "tasks": tasks}
    if context.is_main:
        run.write_final(final)
    aucs = ", ".join(
        f"{task} AUC {values['auc']:.4f}" if not math.isnan(values["auc"]) else f"{task} AUC nan"
        for task, values in tasks.items()
    )
    logger.info("final %s/%s: %s (%s)", domain, options.eval_split, aucs, run.final_file)
    return final

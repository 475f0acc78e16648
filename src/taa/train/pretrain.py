"""``taa pretrain``: train a registered multi-task model on a source domain."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taa.data.batches import TensorSplit, epoch_slices, load_split
from taa.data.schema import Schema
from taa.data.shards import (
    ParquetStream,
    StreamPlan,
    label_index_split,
    read_selected_rows,
    resolve_split,
    shard_bounds,
)
from taa.distributed import (
    DistributedContext,
    ShardPlan,
    proportional_batches,
    rows_per_rank,
    start_processes,
    wrap_model,
)
from taa.errors import DataError
from taa.models.base import ModelConfig, build_model
from taa.train.config import PretrainConfig
from taa.train.evaluate import evaluate_model
from taa.train.loop import LoopParts, fit
from taa.train.runs import RunResult, config_record
from taa.train.runtime import apply_threads, resolve_device, seed_everything
from taa.train.setup import (
    adam,
    check_run_options,
    compiled,
    final_evaluation,
    open_run,
    place,
    require_labels,
    require_rows,
    task_weight_tensor,
)
from taa.train.steps import ShuffledPasses, SupervisedStep

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "mmoe"


def holdout_split(
    split: TensorSplit, fraction: float, seed: int, *, stratify: bool = True
) -> tuple[TensorSplit, TensorSplit]:
    """Split a domain's rows into (train, validation) by whole groups, with a seeded draw.

    Whole groups (``search_id``, one result page) go to one side, so no page is split
    between training and validation and group AUC is measured on complete pages. About
    ``fraction`` of the groups are held out: ``round(fraction * count)`` of each stratum.
    With ``stratify`` a group's stratum is its most advanced label combination (a page
    with a conversion, with a click only, or with neither), so rare positives reach the
    validation split in proportion; without it, all groups form one stratum. At least
    one group is held out and at least two rows are kept for training; a split with a
    single group is divided by rows instead.

    Returns:
        ``(train, valid)`` splits; their rows are disjoint and cover ``split``.
    """
    rows = len(split)
    generator = torch.Generator().manual_seed(seed)
    groups, row_group = torch.unique(split.groups, return_inverse=True)
    if len(groups) < 2:
        row_group = torch.arange(rows)
    count = int(row_group.max()) + 1
    if stratify:
        weights = 2 ** torch.arange(split.labels.shape[1], dtype=torch.float32)
        row_code = (split.labels.nan_to_num(0.0) * weights).sum(1)
        strata = torch.zeros(count).scatter_reduce(0, row_group, row_code, reduce="amax")
    else:
        strata = torch.zeros(count)
    held = []
    for stratum in torch.unique(strata):
        members = torch.nonzero(strata == stratum).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[: round(fraction * len(members))])
    valid_groups = torch.cat(held)
    if len(valid_groups) == 0:
        valid_groups = torch.randperm(count, generator=generator)[:1]
    is_valid = torch.zeros(count, dtype=torch.bool)
    is_valid[valid_groups] = True
    valid_rows = is_valid[row_group]
    if int((~valid_rows).sum()) < 2:
        raise DataError(
            f"holding out {fraction} of {count} groups leaves fewer than 2 training rows; "
            "lower --valid-fraction or use a larger train split"
        )
    train_index = torch.nonzero(~valid_rows).squeeze(1)
    valid_index = torch.nonzero(valid_rows).squeeze(1)
    return split.subset(train_index), split.subset(valid_index)


@dataclass
class TrainingRows:
    """Where pretraining's rows come from: the training split (None when streamed), the
    batch plan over it, this rank's validation rows, and the loss scale of its batches."""

    train: TensorSplit | None
    plan: Any
    valid: TensorSplit
    train_rows: int
    valid_rows: int
    loss_scale: float = 1.0


def _training_rows(
    config: PretrainConfig, schema: Schema, context: DistributedContext
) -> TrainingRows:
    """Load the train split whole (one process), or by rank and/or as a stream.

    The validation holdout is always :func:`holdout_split` of the whole split, so every
    way of running holds out the same rows. Under torchrun or ``--streaming`` it is
    drawn from the group key and label columns alone; each rank then reads its share
    of the validation rows, and either its share of the training rows or a stream of
    its row range that skips the validation rows.
    """
    where = f"{config.dataset}/{config.domain}/train"
    if not context.enabled and not config.streaming:
        source = load_split(config.dataset, config.domain, "train", schema)
        require_rows(source, 3, where, "pretraining needs a train and a validation part")
        require_labels(source, where)
        train, valid = holdout_split(
            source, config.valid_fraction, config.seed, stratify=config.stratify
        )
        batch_size = min(config.batch_size, len(train))
        plan = ShuffledPasses(len(train), batch_size, config.seed)
        return TrainingRows(train, plan, valid, len(train), len(valid))

    path = resolve_split(config.dataset, config.domain, "train", schema)
    index = label_index_split(path, schema)
    require_rows(index, 3, where, "pretraining needs a train and a validation part")
    require_labels(index, where)
    train_part, valid_part = holdout_split(
        index, config.valid_fraction, config.seed, stratify=config.stratify
    )
    train_rows = np.sort(train_part.categorical[:, 0].numpy())
    valid_rows = np.sort(valid_part.categorical[:, 0].numpy())
    start, stop = shard_bounds(len(valid_rows), context.rank, context.world_size)
    valid = read_selected_rows(path, valid_rows[start:stop], schema)
    batch_size = min(config.batch_size, len(train_rows))
    if not config.streaming:
        counts = rows_per_rank(len(train_rows), context)
        start, stop = shard_bounds(len(train_rows), context.rank, context.world_size)
        train = read_selected_rows(path, train_rows[start:stop], schema)
        shard_plan = ShardPlan(counts, batch_size, config.seed, context)
        return TrainingRows(
            train, shard_plan, valid, len(train_rows), len(valid_rows), shard_plan.loss_scale
        )

    exclude = np.zeros(len(index), dtype=bool)
    exclude[valid_rows] = True
    ranges = [
        shard_bounds(len(index), rank, context.world_size) for rank in range(context.world_size)
    ]
    kept = [int((~exclude[low:high]).sum()) for low, high in ranges]
    batches = proportional_batches(kept, batch_size)
    stream = ParquetStream(
        path,
        schema,
        batch_size=batches[context.rank],
        seed=config.seed,
        buffer_rows=config.shuffle_buffer,
        row_range=ranges[context.rank],
        exclude=exclude,
    )
    steps = min(
        len(epoch_slices(count, batch, training=True))
        for count, batch in zip(kept, batches, strict=True)
    )
    loss_scale = context.world_size * batches[context.rank] / sum(batches)
    return TrainingRows(
        None, StreamPlan(stream, steps), valid, len(train_rows), len(valid_rows), loss_scale
    )


def default_run_dir(config: PretrainConfig, model_name: str) -> Path:
    return Path("runs") / f"pretrain-{model_name}-{config.domain}-s{config.seed}"


def pretrain(config: PretrainConfig) -> RunResult:
    """Train ``config.model`` on ``config.domain``'s train split and keep the best epoch.

    Early stopping uses a validation split of ``valid_fraction`` of the train rows (see
    :func:`holdout_split`); the best checkpoint is then scored on ``eval_split``
    (``test`` by default) of the same domain.

    Returns:
        :class:`~taa.train.runs.RunResult` with the run folder, ``final_metrics`` and the
        best checkpoint's path.
    """
    apply_threads(config.threads)
    context, device = start_processes(resolve_device(config.device))
    schema = Schema.load(config.dataset)
    check_run_options(config, schema, config.domain)
    model_name = config.model or DEFAULT_MODEL
    model_config = config.model_config or ModelConfig()
    run_dir = config.run_dir or default_run_dir(config, model_name)
    resolved = dataclasses.replace(
        config, model=model_name, model_config=model_config, run_dir=run_dir
    )
    record = config_record(
        "pretrain",
        resolved.to_dict(),
        model_name=model_name,
        model_config=resolved.to_dict()["model_config"],
        schema=schema,
        device=device,
    )
    rows = _training_rows(config, schema, context)
    seed_everything(config.seed)
    model = build_model(model_name, schema, model_config).to(device)
    run, resuming, tracker = open_run(run_dir, record, schema, config)
    logger.info(
        "pretrain %s on %s: %d train rows, %d validation rows%s -> %s",
        model_name,
        config.domain,
        rows.train_rows,
        rows.valid_rows,
        f" over {context.world_size} processes" if context.enabled else "",
        run.path,
    )
    train_split = place(rows.train, device) if rows.train is not None else None

    forward = wrap_model(model, device, context)
    optimizer = adam(model.parameters(), config.lr, config.weight_decay)
    step = SupervisedStep(
        model,
        compiled(forward, config.compile),
        optimizer,
        train_split,
        device=device,
        precision=config.precision,
        task_weights=task_weight_tensor(config, schema.tasks),
        loss_scale=rows.loss_scale,
    )
    valid_where = f"{config.domain} validation rows"
    warned = {"done": False}

    def validate() -> tuple[dict, dict]:
        metrics = evaluate_model(
            model,
            rows.valid,
            schema.tasks,
            device=device,
            precision=config.precision,
            where=valid_where,
            warn=not warned["done"],
        )
        warned["done"] = True
        return metrics, {}

    parts = LoopParts(
        model=model,
        model_name=model_name,
        schema_digest=schema.digest(),
        tasks=schema.tasks,
        step=step,
        plan=rows.plan,
        validate=validate,
        optimizers={"model": optimizer},
        metadata={"method": "pretrain", "domain": config.domain, "seed": config.seed},
        tracker=tracker,
    )
    result = fit(
        run,
        parts,
        epochs=config.epochs,
        patience=config.patience,
        resume=resuming,
        quiet=config.quiet,
    )
    summary = {
        "method": "pretrain",
        "model": model_name,
        "source": config.domain,
        "seed": config.seed,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best_validation_score": result.best_score,
    }
    final = final_evaluation(
        run, schema, config, domain=config.domain, device=device, summary=summary, trained=model
    )
    return RunResult(run_dir=run.path, final_metrics=final, best_checkpoint=run.best_checkpoint)

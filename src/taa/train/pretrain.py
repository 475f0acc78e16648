"""``taa pretrain``: train a registered multi-task model on a source domain."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from taa.data.batches import TensorSplit, load_split
from taa.data.schema import Schema
from taa.errors import DataError
from taa.models.base import ModelConfig, build_model
from taa.train.config import PretrainConfig
from taa.train.evaluate import evaluate_model
from taa.train.loop import LoopParts, fit
from taa.train.runs import RunFolder, RunResult, config_record
from taa.train.runtime import apply_threads, resolve_device, seed_everything
from taa.train.setup import (
    adam,
    compiled,
    final_evaluation,
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
    device = resolve_device(config.device)
    schema = Schema.load(config.dataset)
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
    source = load_split(config.dataset, config.domain, "train", schema)
    where = f"{config.dataset}/{config.domain}/train"
    require_rows(source, 3, where, "pretraining needs a train and a validation part")
    require_labels(source, where)
    train_split, valid_split = holdout_split(
        source, config.valid_fraction, config.seed, stratify=config.stratify
    )
    seed_everything(config.seed)
    model = build_model(model_name, schema, model_config).to(device)
    run, resuming = RunFolder.open(
        run_dir, record, resume=config.resume, overwrite=config.overwrite
    )
    run.write_config(record, schema)
    logger.info(
        "pretrain %s on %s: %d train rows, %d validation rows -> %s",
        model_name,
        config.domain,
        len(train_split),
        len(valid_split),
        run.path,
    )
    train_split = place(train_split, device)

    optimizer = adam(model.parameters(), config.lr, config.weight_decay)
    batch_size = min(config.batch_size, len(train_split))
    step = SupervisedStep(
        model,
        compiled(model, config.compile),
        optimizer,
        train_split,
        device=device,
        precision=config.precision,
        task_weights=task_weight_tensor(config, schema.tasks),
    )
    valid_where = f"{config.domain} validation rows"
    warned = {"done": False}

    def validate() -> tuple[dict, dict]:
        metrics = evaluate_model(
            model,
            valid_split,
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
        plan=ShuffledPasses(len(train_split), batch_size, config.seed),
        validate=validate,
        optimizers={"model": optimizer},
        metadata={"method": "pretrain", "domain": config.domain, "seed": config.seed},
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
        run, schema, config, domain=config.domain, device=device, summary=summary
    )
    return RunResult(run_dir=run.path, final_metrics=final, best_checkpoint=run.best_checkpoint)

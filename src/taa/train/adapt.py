"""``taa adapt``: move a source model to a target domain with TAA or a baseline.

Methods (docs/method.md explains each and its defaults):

* ``taa``: per-task Wasserstein critics with gradient penalty (:class:`TaaStep`);
* ``finetune``: the source model trained on the target sample's labels;
* ``dann``: gradient reversal and a per-task domain classifier (:class:`DannStep`);
* ``target-only``: the same model trained from scratch on the target sample;
* ``source-only``: the source model evaluated as it is (no training).

The target sample's ``train`` split trains; its ``valid`` split picks the epoch. The
test split is only scored once, with the best checkpoint, at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch

from taa.data.batches import TensorSplit
from taa.data.schema import Schema
from taa.data.shards import (
    PairedStreamPlan,
    ParquetStream,
    StreamedSource,
    parquet_rows,
    read_selected_rows,
    resolve_split,
    shard_bounds,
)
from taa.distributed import (
    PairedShardPlan,
    ShardPlan,
    all_reduce_mean,
    broadcast_module,
    current,
    gather_scores,
    rows_per_rank,
    start_processes,
    wrap_model,
)
from taa.errors import ConfigError, DataError
from taa.io import atomic_write_json
from taa.models.base import ModelConfig, MultiTaskModel, build_model
from taa.modules.critic import Critic, DomainClassifier
from taa.train.checkpoint import check_schema, load_checkpoint, save_checkpoint
from taa.train.config import AdaptConfig
from taa.train.evaluate import collect_outputs, evaluate_model, load_rows
from taa.train.loop import LoopParts, fit
from taa.train.metrics import task_metrics
from taa.train.runs import RunFolder, RunResult, config_record
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
from taa.train.steps import DannStep, PairedPasses, SupervisedStep, TaaStep, TargetPasses

logger = logging.getLogger(__name__)

#: Source rows whose features are compared with the target validation features each epoch.
SOURCE_EVAL_ROWS = 4096
#: Adam betas of critics and domain classifiers (a short memory, as in WGAN-GP).
CRITIC_BETAS = (0.5, 0.9)


StartingModel = tuple[MultiTaskModel | None, str, ModelConfig, str | None]


def _starting_model(config: AdaptConfig, schema: Schema) -> StartingModel:
    """The source model (``None`` for target-only), its name and sizes, its source domain."""
    if config.source_checkpoint is None:
        return None, config.model or "mmoe", config.model_config or ModelConfig(), config.source
    model, metadata = load_checkpoint(config.source_checkpoint)
    check_schema(metadata, schema, checkpoint=config.source_checkpoint, dataset=config.dataset)
    name = metadata["model_name"]
    if config.model is not None and config.model != name:
        raise ConfigError(
            f"option --model got {config.model!r} but {config.source_checkpoint} holds a "
            f"{name!r} model; drop --model (adaptation keeps the source model's architecture)"
        )
    if config.model_config is not None:
        raise ConfigError(
            "the --model-* size options cannot change a model loaded from "
            f"{config.source_checkpoint}; drop them (or use --method target-only without "
            "--source-checkpoint to train other sizes)"
        )
    source = config.source or metadata.get("metadata", {}).get("domain")
    return model, name, model.config, source


def default_run_dir(config: AdaptConfig, model_name: str, source: str | None) -> Path:
    domains = f"{source}-{config.target}" if source else config.target
    return Path("runs") / (
        f"adapt-{config.method}-{model_name}-{domains}-{config.sample}-s{config.seed}"
    )


def _load_target(config: AdaptConfig, schema: Schema) -> tuple[TensorSplit, TensorSplit]:
    splits = []
    for part in ("train", "valid"):
        split = load_rows(config.dataset, config.target, f"samples/{config.sample}/{part}", schema)
        where = f"{config.dataset}/{config.target}/samples/{config.sample}/{part}"
        require_rows(
            split, 2 if part == "train" else 1, where, "draw a larger sample with `taa sample`"
        )
        require_labels(split, where)
        splits.append(split)
    return splits[0], splits[1]


def adapt(config: AdaptConfig) -> RunResult:
    """Adapt a source checkpoint to ``config.target`` with ``config.method``.

    Returns:
        :class:`~taa.train.runs.RunResult`; ``final_metrics`` are those of the best
        checkpoint (chosen on the target sample's validation split) on the target's
        ``eval_split`` (``test`` by default).

    Raises:
        SchemaMismatchError: the source checkpoint was trained on another schema.
    """
    apply_threads(config.threads)
    _, device = start_processes(resolve_device(config.device))
    schema = Schema.load(config.dataset)
    check_run_options(config, schema, config.target)
    source_model, model_name, model_config, source = _starting_model(config, schema)
    if source is None and config.uses_source_rows:
        raise ConfigError(
            f"option --source is not set and {config.source_checkpoint} does not record its "
            "training domain; pass --source <domain>"
        )
    run_dir = config.run_dir or default_run_dir(config, model_name, source)
    resolved = dataclasses.replace(
        config,
        model=model_name,
        model_config=None if config.source_checkpoint else model_config,
        source=source,
        source_loss_weight=None
        if config.method in ("target-only", "source-only")
        else config.resolved_source_loss_weight,
        run_dir=run_dir,
    )
    record = config_record(
        "adapt",
        resolved.to_dict(),
        model_name=model_name,
        model_config=dataclasses.asdict(model_config),
        schema=schema,
        device=device,
    )
    target_train, target_valid = _load_target(config, schema)
    seed_everything(config.seed)
    if source_model is None or config.method == "target-only":
        model = build_model(model_name, schema, model_config)
    else:
        model = source_model
    run, resuming, tracker = open_run(run_dir, record, schema, config)
    logger.info(
        "adapt %s with %s: %s -> %s sample %s (%d train, %d valid rows) -> %s",
        model_name,
        config.method,
        source,
        config.target,
        config.sample,
        len(target_train),
        len(target_valid),
        run.path,
    )
    summary = {
        "method": config.method,
        "model": model_name,
        "source": source,
        "target": config.target,
        "sample": config.sample,
        "seed": config.seed,
    }
    metadata = {**summary, "domain": config.target}
    if config.method == "source-only":
        return _source_only(
            run, config, schema, model, model_name, device, metadata, summary, target_valid
        )
    model.to(device)
    parts = _build_parts(
        config, schema, model, model_name, device, target_train, target_valid, source, metadata
    )
    parts.tracker = tracker
    result = fit(
        run,
        parts,
        epochs=config.epochs,
        patience=config.patience,
        resume=resuming,
        quiet=config.quiet,
    )
    summary.update(
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        best_validation_score=result.best_score,
    )
    final = final_evaluation(
        run, schema, config, domain=config.target, device=device, summary=summary, trained=model
    )
    return RunResult(run_dir=run.path, final_metrics=final, best_checkpoint=run.best_checkpoint)


def _feature_widths(model: MultiTaskModel, split: TensorSplit, device: torch.device) -> list[int]:
    """Width D of each task's features, read from one eval-mode forward of two rows."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        batch = split.slice(0, min(2, len(split))).to(device)
        output = model(batch.categorical, batch.numerical)
    model.train(was_training)
    return [int(feature.shape[-1]) for feature in output.features]


def _build_parts(
    config: AdaptConfig,
    schema: Schema,
    model: MultiTaskModel,
    model_name: str,
    device: torch.device,
    target_train: TensorSplit,
    target_valid: TensorSplit,
    source: str | None,
    metadata: dict[str, Any],
) -> LoopParts:
    method = config.method
    context = current()
    target_path = resolve_split(
        config.dataset, config.target, f"samples/{config.sample}/train", schema
    )
    target_rows = parquet_rows(target_path) if context.enabled else len(target_train)
    batch_size = min(config.batch_size, target_rows)
    optimizer = adam(model.parameters(), config.lr, config.weight_decay)
    common: dict[str, Any] = {
        "device": device,
        "precision": config.precision,
        "task_weights": task_weight_tensor(config, schema.tasks),
    }
    forward = compiled(wrap_model(model, device, context), config.compile)
    target_train = place(target_train, device)
    modules: dict[str, torch.nn.Module] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {"model": optimizer}
    source_eval = None
    if context.enabled:
        target_plan: Any = ShardPlan(
            rows_per_rank(target_rows, context), batch_size, config.seed, context, offset=1
        )
        target_plan.steps = math.ceil(target_rows / batch_size)
    else:
        target_plan = TargetPasses(len(target_train), batch_size, config.seed)
    common["loss_scale"] = getattr(target_plan, "loss_scale", 1.0)
    if config.uses_source_rows:
        where = f"{config.dataset}/{source}/train"
        source_path = resolve_split(config.dataset, source, "train", schema)
        source_rows = parquet_rows(source_path)
        if source_rows < 2:
            raise DataError(
                f"{where} has {source_rows} rows; at least 2 are needed; check the source domain"
            )
        low, high = shard_bounds(source_rows, context.rank, context.world_size)
        generator = torch.Generator().manual_seed(config.seed)
        eval_rows = max(1, SOURCE_EVAL_ROWS // context.world_size)
        chosen = torch.randperm(high - low, generator=generator)[:eval_rows]
        source_eval = read_selected_rows(source_path, low + chosen.sort().values.numpy(), schema)
        require_labels(source_eval, where)
        common["source_weight"] = config.resolved_source_loss_weight
        if config.streaming:
            stream = ParquetStream(
                source_path,
                schema,
                batch_size=getattr(target_plan, "batch", batch_size),
                seed=config.seed,
                buffer_rows=config.shuffle_buffer,
                row_range=(low, high),
            )
            plan: Any = PairedStreamPlan(target_plan, StreamedSource(stream))
        else:
            source_train = load_rows(config.dataset, source, "train", schema)
            require_labels(source_train, where)
            common["source"] = place(source_train, device)
            if context.enabled:
                plan = PairedShardPlan(
                    rows_per_rank(source_rows, context),
                    rows_per_rank(target_rows, context),
                    batch_size,
                    config.seed,
                    context,
                )
            else:
                plan = PairedPasses(len(source_train), len(target_train), batch_size, config.seed)
    else:
        plan = target_plan
    widths = _feature_widths(model, target_valid, device)
    if method in ("taa", "dann"):
        kind = Critic if method == "taa" else DomainClassifier
        critics = torch.nn.ModuleList(kind(width, config.critic_hidden) for width in widths)
        critics.to(device)
        broadcast_module(critics, context)
        critic_optimizer = adam(critics.parameters(), config.critic_lr, betas=CRITIC_BETAS)
        modules["critics"] = critics
        optimizers["critics"] = critic_optimizer
    if method == "taa":
        step: Any = TaaStep(
            model,
            forward,
            optimizer,
            target_train,
            **common,
            critics=critics,
            critic_optimizer=critic_optimizer,
            critic_steps=config.critic_steps,
            gp_weight=config.gp_weight,
            adversarial_weight=config.adversarial_weight,
        )
    elif method == "dann":
        step = DannStep(
            model,
            forward,
            optimizer,
            target_train,
            **common,
            classifiers=critics,
            classifier_optimizer=critic_optimizer,
            adversarial_weight=config.adversarial_weight,
        )
    else:
        step = SupervisedStep(model, forward, optimizer, target_train, **common)

    where = f"{config.target}/samples/{config.sample}/valid"
    warned = {"done": False}

    def validate() -> tuple[dict, dict]:
        probabilities, target_features = collect_outputs(
            model,
            target_valid,
            device=device,
            precision=config.precision,
            with_features=method == "taa",
        )
        probabilities, labels, groups = gather_scores(
            probabilities, target_valid.labels, target_valid.groups, context
        )
        metrics = task_metrics(
            labels,
            probabilities,
            groups,
            schema.tasks,
            where=where,
            warn=not warned["done"] and context.is_main,
        )
        warned["done"] = True
        extras: dict[str, Any] = {}
        if method == "taa" and source_eval is not None and target_features is not None:
            _, source_features = collect_outputs(
                model, source_eval, device=device, precision=config.precision, with_features=True
            )
            estimates = wasserstein_estimates(
                modules["critics"], source_features or [], target_features, schema.tasks
            )
            # Each rank estimates on its own rows; the mean over ranks is the logged figure.
            values = torch.tensor(list(estimates.values()), device=device)
            averaged = all_reduce_mean(values, context)
            extras["wasserstein"] = dict(zip(estimates, averaged.tolist(), strict=True))
        return metrics, extras

    return LoopParts(
        model=model,
        model_name=model_name,
        schema_digest=schema.digest(),
        tasks=schema.tasks,
        step=step,
        plan=plan,
        validate=validate,
        optimizers=optimizers,
        modules=modules,
        metadata=metadata,
        start_from_model=method in ("taa", "finetune", "dann"),
    )


def wasserstein_estimates(
    critics: torch.nn.ModuleList,
    source_features: list[torch.Tensor],
    target_features: list[torch.Tensor],
    tasks: tuple[str, ...],
) -> dict[str, float]:
    """Per task ``mean critic(source features) - mean critic(target features)``.

    Args:
        critics: one critic per task.
        source_features, target_features: one ``[R, D]`` tensor per task (row counts may
            differ between domains).
    """
    critics.eval()
    values = []
    with torch.inference_mode():
        for critic, source, target in zip(critics, source_features, target_features, strict=True):
            values.append(critic(source).mean() - critic(target).mean())
    result = torch.stack(values).tolist()
    return {task: float(value) for task, value in zip(tasks, result, strict=True)}


def _source_only(
    run: RunFolder,
    config: AdaptConfig,
    schema: Schema,
    model: MultiTaskModel,
    model_name: str,
    device: torch.device,
    metadata: dict[str, Any],
    summary: dict[str, Any],
    target_valid: TensorSplit,
) -> RunResult:
    """Score the source model as it is; the run folder looks like a zero-epoch run."""
    model.to(device)
    valid = evaluate_model(
        model,
        target_valid,
        schema.tasks,
        device=device,
        precision=config.precision,
        where=f"{config.target}/samples/{config.sample}/valid",
    )
    checkpoint_metadata = {**metadata, "epoch": 0, "valid": valid}
    if current().is_main:
        save_checkpoint(
            run.best_checkpoint, model, model_name, schema.digest(), checkpoint_metadata
        )
        atomic_write_json(run.best_info, checkpoint_metadata)
        run.write_history([{"epoch": 0, "seconds": 0.0, "train": {}, "valid": valid}])
    summary.update(best_epoch=0, epochs_run=0, best_validation_score=None)
    final = final_evaluation(
        run, schema, config, domain=config.target, device=device, summary=summary, trained=model
    )
    return RunResult(run_dir=run.path, final_metrics=final, best_checkpoint=run.best_checkpoint)

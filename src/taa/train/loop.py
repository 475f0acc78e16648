"""The epoch loop shared by pretraining and every adaptation method.

A method supplies a *step* (one optimisation step on the rows at some indices, returning
detached loss tensors), a *plan* (which indices each epoch visits, with a saveable state)
and a *validate* function. The loop adds what every run needs: loss accumulation without
a host sync per step, one log line and one ``metrics.jsonl`` record per epoch, early
stopping on the validation score, the best checkpoint, and a full training state at
each epoch end so that ``--resume`` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from taa.distributed import all_reduce_mean, current
from taa.errors import ConvergenceWarning, CriticDivergenceWarning
from taa.io import atomic_write_json
from taa.models.base import MultiTaskModel
from taa.tracking import NullTracker, Tracker, flatten_metrics
from taa.train.checkpoint import cpu_state_dict, load_state, save_checkpoint, save_state
from taa.train.evaluate import selection_score
from taa.train.runs import RunFolder
from taa.train.runtime import progress, rng_state, set_rng_state, show_progress

logger = logging.getLogger(__name__)

StepLosses = dict[str, torch.Tensor]
Validation = tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]


class BatchPlan(Protocol):
    """Which row indices each training step of an epoch uses."""

    steps: int

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, ...]]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class LoopParts:
    """What a method hands to :func:`fit`.

    Attributes:
        model: the model being trained (not a ``torch.compile`` wrapper).
        model_name: its registry name, stored in checkpoints.
        schema_digest: digest of the data's schema, stored in checkpoints.
        tasks: task names in order (length T).
        step: ``step(*indices) -> {"loss": [], "task_loss": [T], ...}``, detached tensors.
        plan: the batch plan.
        validate: returns ``(valid metrics per task, extra train entries)``; the extras
            (``{"wasserstein": {task: x}}``) are merged into the epoch's ``train`` record.
        optimizers: every optimizer, by name; saved in ``last.pt``.
        modules: extra trained modules (critics), by name; saved in ``last.pt``.
        metadata: written into every checkpoint (method, domains, ...).
        start_from_model: validate the starting model as epoch 0 (adaptation from a
            source checkpoint); the best checkpoint may then be the unchanged model.
        tracker: receives each epoch's record, flattened (``--track``).

    Under torchrun every rank runs the loop (validation gathers all ranks' rows, so all
    take the same decisions) but only rank 0 writes checkpoints, history and tracking.
    """

    model: MultiTaskModel
    model_name: str
    schema_digest: str
    tasks: tuple[str, ...]
    step: Callable[..., StepLosses]
    plan: BatchPlan
    validate: Callable[[], Validation]
    optimizers: dict[str, torch.optim.Optimizer]
    modules: dict[str, nn.Module] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    start_from_model: bool = False
    tracker: Tracker = field(default_factory=NullTracker)


@dataclass
class LoopState:
    """Progress of a run, saved in ``last.pt`` at every epoch end."""

    epoch: int = 0
    best_epoch: int = -1
    best_score: float = -math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitResult:
    """Outcome of :func:`fit`: ``best_epoch`` (0 = the starting model) and ``epochs_run``."""

    best_epoch: int
    epochs_run: int
    best_score: float
    history: list[dict[str, Any]]


def _add(totals: dict[str, torch.Tensor] | None, losses: StepLosses) -> dict[str, torch.Tensor]:
    if totals is None:
        return {key: value.detach().clone() for key, value in losses.items()}
    for key, value in losses.items():
        totals[key] += value.detach()
    return totals


def _per_task(values: list[float], tasks: tuple[str, ...]) -> dict[str, float]:
    return {task: float(value) for task, value in zip(tasks, values, strict=True)}


def _global_totals(totals: dict[str, torch.Tensor], parts: LoopParts) -> dict[str, torch.Tensor]:
    """Under torchrun, the losses of the global batches: each rank's sums weighted by its
    share of the rows (the step's ``loss_scale``) and averaged over ranks."""
    context = current()
    if not context.enabled:
        return totals
    scale = float(getattr(parts.step, "loss_scale", 1.0))
    return {key: all_reduce_mean(value * scale, context) for key, value in totals.items()}


def summarise(totals: dict[str, torch.Tensor], steps: int, tasks: tuple[str, ...]) -> dict:
    """Mean losses of an epoch as floats: one device-to-host copy per entry, once per epoch."""
    record: dict[str, Any] = {"loss": float((totals.pop("loss") / steps).item())}
    for key in ("task_loss", "critic_loss", "adversarial_loss"):
        value = totals.pop(key, None)
        record[key] = {} if value is None else _per_task((value / steps).tolist(), tasks)
    for key, value in totals.items():
        record[key] = (value / steps).tolist()
    return record


def check_divergence(train: dict[str, Any], epoch: int, warned: set[tuple[str, str]]) -> None:
    """Warn once per task and phase when a critic's loss became non-finite."""
    phases = {"critic_loss": "critic step", "adversarial_loss": "encoder step"}
    for key, phase in phases.items():
        for task, value in train.get(key, {}).items():
            if not math.isfinite(value) and (task, phase) not in warned:
                warned.add((task, phase))
                warnings.warn(
                    f"the critic of task {task!r} diverged in the {phase} at epoch {epoch}: "
                    f"its loss is {value}; lower --critic-lr or --adversarial-weight, or raise "
                    "--gp-weight",
                    CriticDivergenceWarning,
                    stacklevel=3,
                )


def _save_state(run: RunFolder, parts: LoopParts, state: LoopState) -> None:
    if not current().is_main:
        return
    save_state(
        run.last_state,
        {
            "format": "taa-training-state",
            "loop": {
                "epoch": state.epoch,
                "best_epoch": state.best_epoch,
                "best_score": state.best_score,
                "bad_epochs": state.bad_epochs,
                "stopped_early": state.stopped_early,
                "history": state.history,
            },
            "model": cpu_state_dict(parts.model),
            "optimizers": {name: item.state_dict() for name, item in parts.optimizers.items()},
            "modules": {name: cpu_state_dict(item) for name, item in parts.modules.items()},
            "plan": parts.plan.state_dict(),
            "rng": rng_state(),
        },
    )


def _load_state(run: RunFolder, parts: LoopParts) -> LoopState:
    device = next(parts.model.parameters()).device
    payload = load_state(run.last_state, map_location="cpu")
    parts.model.load_state_dict(payload["model"])
    parts.model.to(device)
    for name, module in parts.modules.items():
        module.load_state_dict(payload["modules"][name])
        module.to(device)
    for name, optimizer in parts.optimizers.items():
        optimizer.load_state_dict(payload["optimizers"][name])
    parts.plan.load_state_dict(payload["plan"])
    set_rng_state(payload["rng"])
    loop = payload["loop"]
    return LoopState(
        epoch=int(loop["epoch"]),
        best_epoch=int(loop["best_epoch"]),
        best_score=float(loop["best_score"]),
        bad_epochs=int(loop["bad_epochs"]),
        stopped_early=bool(loop["stopped_early"]),
        history=list(loop["history"]),
    )


def _validate_and_keep(
    run: RunFolder, parts: LoopParts, state: LoopState, train: dict[str, Any], seconds: float
) -> float:
    valid, extras = parts.validate()
    train.update(extras)
    score = selection_score(valid)
    record = {"epoch": state.epoch, "seconds": round(seconds, 3), "train": train, "valid": valid}
    state.history.append(record)
    main = current().is_main
    if math.isfinite(score) and score > state.best_score:
        state.best_score = score
        state.best_epoch = state.epoch
        state.bad_epochs = 0
        metadata = {**parts.metadata, "epoch": state.epoch, "valid": valid, "score": score}
        if main:
            save_checkpoint(
                run.best_checkpoint, parts.model, parts.model_name, parts.schema_digest, metadata
            )
            atomic_write_json(run.best_info, metadata)
    elif state.epoch > 0:
        state.bad_epochs += 1
    if main:
        run.write_history(state.history)
        parts.tracker.log_metrics(flatten_metrics(record), step=state.epoch)
    return score


def fit(
    run: RunFolder, parts: LoopParts, *, epochs: int, patience: int, resume: bool, quiet: bool
) -> FitResult:
    """Train for up to ``epochs`` epochs with early stopping; keep the best checkpoint.

    The score of an epoch is :func:`~taa.train.evaluate.selection_score` of its
    validation metrics (mean AUC over tasks where defined). Training stops when
    ``patience`` epochs in a row fail to beat the best score.
    """
    show = show_progress(quiet)
    warned: set[tuple[str, str]] = set()
    if resume:
        state = _load_state(run, parts)
        logger.info("resuming %s after epoch %d", run.path, state.epoch)
    else:
        state = LoopState()
        if parts.start_from_model:
            score = _validate_and_keep(run, parts, state, {}, 0.0)
            _save_state(run, parts, state)
            logger.info("epoch 0 (starting model): validation score %.5f", score)

    while state.epoch < epochs and not state.stopped_early:
        state.epoch += 1
        started = time.perf_counter()
        parts.model.train()
        for module in parts.modules.values():
            module.train()
        totals: dict[str, torch.Tensor] | None = None
        with progress(parts.plan.steps, f"epoch {state.epoch}", show) as bar:
            for indices in parts.plan.epoch(state.epoch):
                totals = _add(totals, parts.step(*indices))
                bar.update()
        if totals is None:
            raise RuntimeError(f"the batch plan of {run.path} produced no step in an epoch")
        totals = _global_totals(totals, parts)
        train = summarise(totals, parts.plan.steps, parts.tasks)
        check_divergence(train, state.epoch, warned)
        score = _validate_and_keep(run, parts, state, train, time.perf_counter() - started)
        state.stopped_early = state.bad_epochs >= patience
        _save_state(run, parts, state)
        _log_epoch(state, train, score)

    parts.tracker.close()
    if state.stopped_early:
        logger.info("early stop after epoch %d (best epoch %d)", state.epoch, state.best_epoch)
    if state.best_epoch < 0:
        raise RuntimeError(f"{run.path}: no epoch had a finite validation score")
    if parts.start_from_model and state.best_epoch == 0:
        warnings.warn(
            f"no epoch of training beat the starting model on the validation split "
            f"({state.epoch} epoch{'' if state.epoch == 1 else 's'}); the best checkpoint of "
            f"{run.path} is the unchanged starting model",
            ConvergenceWarning,
            stacklevel=2,
        )
    return FitResult(
        best_epoch=state.best_epoch,
        epochs_run=state.epoch,
        best_score=state.best_score,
        history=state.history,
    )


def _log_epoch(state: LoopState, train: dict[str, Any], score: float) -> None:
    """One INFO line per epoch: losses, critics, Wasserstein estimates, validation AUCs."""

    def listed(values: dict[str, float]) -> str:
        return ", ".join(f"{task} {value:.4f}" for task, value in values.items())

    parts = [f"epoch {state.epoch}: loss {train['loss']:.4f} ({listed(train['task_loss'])})"]
    for key, label in (("critic_loss", "critic loss"), ("wasserstein", "wasserstein")):
        if train.get(key):
            parts.append(f"{label} {listed(train[key])}")
    valid = state.history[-1]["valid"]
    parts.append(f"valid AUC {listed({task: item['auc'] for task, item in valid.items()})}")
    parts.append(f"score {score:.5f}" + (" (best)" if state.best_epoch == state.epoch else ""))
    logger.info("; ".join(parts))

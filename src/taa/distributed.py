"""Data-parallel training across processes and machines: setup, wrapping and collectives.

A run launched by ``torchrun`` has ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT`` in its environment; :func:`init_distributed` reads them and joins the
process group (gloo on CPU, NCCL on GPU). Without them everything here is a no-op, so the
trainers call the same functions in a plain single-process run.

How the pieces fit (see docs/distributed.md):

* each rank reads only its contiguous row range of a split
  (:func:`taa.data.shards.load_split_shard`) and draws batches of ``batch_size / W`` rows
  from it, so a step's global batch has ``batch_size`` rows as in a single process;
* the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` after its
  BatchNorm layers are made global (:func:`sync_batchnorm`), so the normalisation statistics
  are those of the global batch, as in one process;
* critics are **not** wrapped: their gradient penalty differentiates a gradient
  (``create_graph=True``), and DDP's reducer, which hooks the first backward, does not
  support double backward. Their gradients are averaged by hand with
  :func:`all_reduce_gradients` after each critic backward, which gives the same update;
* metrics are computed on rank 0 from every rank's scores and labels gathered together
  (:func:`gather_rows`): one AUC over all rows, never an average of per-rank AUCs;
* only rank 0 writes files and logs (:func:`quiet_other_ranks`).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from taa.errors import ConfigError, TaaError

logger = logging.getLogger(__name__)

T = TypeVar("T")

ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a data-parallel run.

    Attributes:
        rank: global rank, 0 to ``world_size - 1``.
        world_size: number of processes W (1 when not distributed).
        local_rank: rank on this machine; the GPU index under NCCL.
        backend: ``gloo`` or ``nccl``, or None when not distributed.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when there is more than one process and the group is joined."""
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files and logs."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


def _env_int(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={value!r} is not an integer; launch with torchrun, "
            "which sets RANK, WORLD_SIZE and LOCAL_RANK"
        ) from None


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device: the device this process trains on; ``cuda`` selects NCCL and the GPU
            ``LOCAL_RANK``, ``cpu`` selects gloo.

    Returns:
        The context; :data:`SINGLE_PROCESS` when ``WORLD_SIZE`` is unset or 1.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") <= 1:
        return SINGLE_PROCESS
    missing = [name for name in ENVIRONMENT if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {missing} are not; launch "
            "with torchrun (see docs/distributed.md) rather than setting them by hand"
        )
    rank, world_size, local_rank = (_env_int(name) for name in ENVIRONMENT[:3])
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_leave_at_exit)
    logger.info("rank %d of %d joined the %s process group", rank, world_size, backend)
    context = DistributedContext(rank, world_size, local_rank, backend)
    set_current(context)
    return context


def _leave_at_exit() -> None:
    """Wait for every rank before leaving the group at interpreter exit.

    A rank that exits while another still holds a connection open can make that rank's
    gloo threads abort; a bounded barrier first (30 s, so a rank that failed alone does
    not hang the others for ever) lets all ranks leave together.
    """
    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
        else:
            dist.barrier()
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


def local_device(device: torch.device, context: DistributedContext) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` under NCCL, ``device`` otherwise."""
    if context.enabled and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def shutdown(context: DistributedContext) -> None:
    """Leave the process group at the end of a run (after a final barrier)."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    set_current(SINGLE_PROCESS)


def quiet_other_ranks(context: DistributedContext) -> None:
    """Let only rank 0 log below WARNING, so a run's log is not repeated W times."""
    if context.enabled and not context.is_main:
        logging.getLogger("taa").setLevel(logging.WARNING)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a single-machine launch (``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def local_batch_size(batch_size: int, context: DistributedContext) -> int:
    """Rows each rank draws per step so that a step's global batch has ``batch_size`` rows.

    Example:
        >>> local_batch_size(2048, DistributedContext(0, 4, 0, "gloo"))
        512
    """
    if batch_size % context.world_size:
        raise ConfigError(
            f"option --batch-size got {batch_size}, which does not split evenly over "
            f"{context.world_size} processes; use a multiple of {context.world_size}"
        )
    return batch_size // context.world_size


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is the all-reduce (sum) of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        total = gradient.clone()
        dist.all_reduce(total)
        return total


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``tensor`` over all ranks (same shape on every rank)."""
    return _SumOverRanks.apply(tensor)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over the batch of every rank, for CPU (gloo) runs.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this layer does the same on any device:
    in training it all-reduces the sum and then the squared deviations of its input
    (two passes, so no cancellation), normalises with the global mean and biased
    variance, and updates the running statistics with the unbiased global variance,
    as ``BatchNorm1d`` does for one process holding the whole batch. The all-reduces are
    differentiable, so gradients account for every rank's rows too. In evaluation, or in
    a single process, it is a plain ``BatchNorm1d``. Input ``[B, C]`` or ``[B, C, L]``.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        if dist.get_world_size() == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() / input.shape[1]])
        totals = sum_over_ranks(torch.cat([input.sum(dims), count]))
        rows = totals[-1]
        mean = totals[:-1] / rows
        centred = input - mean.view(shape)
        variance = sum_over_ranks((centred * centred).sum(dims)) / rows
        output = centred * torch.rsqrt(variance + self.eps).view(shape)
        if self.affine:
            output = output * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach(), rows.detach())
        return output

    @torch.no_grad()
    def _update_running_stats(
        self, mean: torch.Tensor, variance: torch.Tensor, rows: torch.Tensor
    ) -> None:
        if self.running_mean is None or self.running_var is None:
            return
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None and self.num_batches_tracked is not None:
            factor = 1.0 / float(self.num_batches_tracked)
        elif self.momentum is None:
            factor = 0.0
        else:
            factor = self.momentum
        unbiased = variance * rows / (rows - 1).clamp(min=1)
        self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm layer normalise over the global batch.

    GPUs use ``torch.nn.SyncBatchNorm``; other devices swap ``BatchNorm1d`` layers for
    :class:`GlobalBatchNorm1d` in place. The new layers hold the same parameter and
    buffer objects under the same names, so an existing optimizer keeps working and
    state dicts load either way.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm1d:
            replacement = GlobalBatchNorm1d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device=device,
            )
            # Reuse the very parameter and buffer objects, so an optimizer made before
            # the conversion still updates them.
            for key, value in child.named_parameters(recurse=False):
                setattr(replacement, key, value)
            for key, value in child.named_buffers(recurse=False):
                replacement.register_buffer(key, value)
            replacement.train(child.training)
            setattr(module, name, replacement)
        else:
            sync_batchnorm(child, device)
    return module


def wrap_model(module: nn.Module, device: torch.device, context: DistributedContext) -> nn.Module:
    """The model as this rank trains it: DDP over global-batch BatchNorm when distributed.

    DDP broadcasts rank 0's parameters and buffers when it wraps, so every rank starts
    from the same weights. ``wrapped.module`` is the plain model to save and evaluate.
    """
    if not context.enabled:
        return module
    module = sync_batchnorm(module, device)
    device_ids = [context.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or ``torch.compile``) wrapper."""
    inner = getattr(module, "module", module)
    return getattr(inner, "_orig_mod", inner)


def broadcast_module(module: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (critics)."""
    if not context.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def all_reduce_gradients(module: nn.Module, context: DistributedContext) -> None:
    """Average the gradients of ``module``'s parameters over ranks, in one flat all-reduce.

    Used for the critics in place of DDP (see the module docstring). Parameters without
    a gradient on this rank take part with zeros so that all ranks send equal buffers.
    """
    if not context.enabled:
        return
    parameters = [item for item in module.parameters() if item.requires_grad]
    if not parameters:
        return
    flat = torch.cat(
        [
            (item.grad if item.grad is not None else torch.zeros_like(item)).reshape(-1)
            for item in parameters
        ]
    )
    dist.all_reduce(flat)
    flat /= context.world_size
    offset = 0
    for item in parameters:
        size = item.numel()
        item.grad = flat[offset : offset + size].view_as(item).clone()
        offset += size


def all_reduce_mean(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Mean of ``value`` over ranks (for logging per-epoch losses); ``value`` as is alone."""
    if not context.enabled:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / context.world_size


def gather_rows(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Concatenate every rank's rows of ``tensor`` in rank order; ranks may hold different counts.

    Args:
        tensor: this rank's rows, ``[R_r, ...]`` (same trailing shape and dtype on all ranks).

    Returns:
        ``[sum_r R_r, ...]`` on every rank: rank 0's rows first, then rank 1's, and so on.
    """
    if not context.enabled:
        return tensor
    count = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(context.world_size)]
    dist.all_gather(counts, count)
    sizes = [int(item.item()) for item in counts]
    longest = max(sizes)
    padded = F.pad(tensor, [0, 0] * (tensor.dim() - 1) + [0, longest - tensor.shape[0]])
    pieces = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])


_CURRENT = SINGLE_PROCESS


def current() -> DistributedContext:
    """The context of this process, set by :func:`init_distributed` (one process otherwise)."""
    return _CURRENT


def set_current(context: DistributedContext) -> None:
    """Record ``context`` as this process's (done by :func:`init_distributed`)."""
    global _CURRENT
    _CURRENT = context


def on_main(function: Callable[[], T], context: DistributedContext) -> T | None:
    """Run ``function`` on rank 0 only; if it raises, every rank raises the same error.

    Without this a failure on rank 0 (a run folder that exists, a full disk) would leave
    the other ranks waiting forever at their next collective call.
    """
    if not context.enabled:
        return function()
    outcome: list[Any] = [None]
    result: T | None = None
    if context.is_main:
        try:
            result = function()
        except Exception as error:
            outcome[0] = (type(error).__name__, str(error))
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None and not context.is_main:
        name, message = outcome[0]
        raise TaaError(f"rank 0 failed ({name}): {message}")
    return result


def proportional_batches(rows_per_rank: Sequence[int], batch_size: int) -> list[int]:
    """Each rank's share of a global batch of ``batch_size`` rows, proportional to its rows.

    A rank never draws more rows than it holds, so a global batch at least as large as
    the split is the whole split, exactly as in one process.

    Example:
        >>> proportional_batches([50, 50], 64), proportional_batches([51, 50], 1000)
        ([32, 32], [51, 50])
    """
    total = sum(rows_per_rank)
    return [
        min(rows, max(1, round(batch_size * rows / total))) if rows else 0 for rows in rows_per_rank
    ]


class ShardPlan:
    """Batches of a rank's own rows whose union over ranks is a step's global batch.

    Every rank runs the same number of steps (``steps``, computed from the global row
    count as one process would), draws ``batch`` rows of its shard per step from an
    :class:`~taa.data.batches.IndexStream` seeded per rank, and scales its loss by
    ``loss_scale`` so that DDP's average of per-rank means is the mean over the global
    batch even when ranks hold different row counts.

    Args:
        rows_per_rank: rows each rank holds (its shard of the split).
        batch_size: rows of a global batch (one process's batch size).
        seed: run seed.
        context: this process's place.
        steps: steps per epoch; default one pass over all rows (``epoch_slices``).
        offset: added to the seed, to keep the streams of two plans apart.
    """

    def __init__(
        self,
        rows_per_rank: Sequence[int],
        batch_size: int,
        seed: int,
        context: DistributedContext,
        *,
        steps: int | None = None,
        offset: int = 0,
    ) -> None:
        from taa.data.batches import IndexStream, epoch_slices

        batches = proportional_batches(rows_per_rank, batch_size)
        self.batch = batches[context.rank]
        self.loss_scale = context.world_size * self.batch / sum(batches)
        self.steps = (
            steps
            if steps is not None
            else len(epoch_slices(sum(rows_per_rank), batch_size, training=True))
        )
        self.stream = IndexStream(
            rows_per_rank[context.rank], seed=seed * 1_000_003 + 7_919 * context.rank + offset
        )

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor]]:
        for _ in range(self.steps):
            yield (self.stream.next(self.batch),)

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


class PairedShardPlan:
    """Source and target batches of a rank's shards, ``batch`` rows of each per step.

    An epoch is one pass over the global target sample (``ceil(target rows / batch)``
    steps, as in one process); the batch share of each rank follows its target rows.
    """

    def __init__(
        self,
        source_rows_per_rank: Sequence[int],
        target_rows_per_rank: Sequence[int],
        batch_size: int,
        seed: int,
        context: DistributedContext,
    ) -> None:
        import math

        from taa.data.batches import IndexStream

        self.target = ShardPlan(target_rows_per_rank, batch_size, seed, context, offset=1)
        self.steps = math.ceil(sum(target_rows_per_rank) / batch_size)
        self.target.steps = self.steps
        self.batch = self.target.batch
        self.loss_scale = self.target.loss_scale
        self.source = IndexStream(
            source_rows_per_rank[context.rank], seed=seed * 1_000_003 + 7_919 * context.rank
        )

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            yield self.source.next(self.batch), self.target.stream.next(self.batch)

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source.state_dict(), "target": self.target.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self.target.load_state_dict(state["target"])


def rows_per_rank(rows: int, context: DistributedContext) -> list[int]:
    """Row counts of every rank's contiguous shard of ``rows`` rows."""
    from taa.data.shards import shard_bounds

    bounds = [shard_bounds(rows, rank, context.world_size) for rank in range(context.world_size)]
    return [stop - start for start, stop in bounds]


def gather_scores(
    probabilities: np.ndarray,
    labels: torch.Tensor,
    groups: torch.Tensor,
    context: DistributedContext,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every rank's probabilities ``[R_r, T]``, labels ``[R_r, T]`` and groups ``[R_r]``
    gathered into the whole split's, in rank order, on every rank; as NumPy arrays.
    """
    if not context.enabled:
        return probabilities, labels.cpu().numpy(), groups.cpu().numpy()
    device = torch.device("cuda", context.local_rank) if context.backend == "nccl" else None
    gathered = [
        gather_rows(torch.as_tensor(item).to(device or "cpu"), context).cpu().numpy()
        for item in (probabilities, labels, groups)
    ]
    return gathered[0], gathered[1], gathered[2]


def broadcast_best(model: nn.Module, context: DistributedContext) -> None:
    """Give every rank rank 0's weights (rank 0 loaded them from its checkpoint)."""
    broadcast_module(model, context)


def check_resumable(context: DistributedContext, *, resume: bool) -> None:
    """Refuse ``--resume`` with several processes: each rank's batch stream position
    would have to be saved too, and only rank 0 writes the run folder."""
    if resume and context.enabled:
        raise ConfigError(
            f"option --resume is not supported under torchrun ({context.world_size} "
            "processes): only rank 0's state is saved; rerun the command without --resume"
        )


def start_processes(device: torch.device) -> tuple[DistributedContext, torch.device]:
    """What every command does first: join torchrun's process group if launched by it,
    pick this rank's device and keep the other ranks' logs quiet.

    Returns:
        The context and the device this rank computes on.
    """
    context = init_distributed(device)
    quiet_other_ranks(context)
    return context, local_device(device, context)

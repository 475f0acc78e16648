"""The TAA step fed by taa's tensor batches versus a naive per-row DataLoader pipeline.

The naive pipeline is the way published multi-task recommendation code feeds its models:
a ``torch.utils.data.Dataset`` that returns one row at a time (three NumPy arrays), a
``DataLoader`` per domain with worker processes (``num_workers=2``), shuffling and the
default collate, the shorter (target) loader restarted when it runs out.

Both pipelines drive the SAME step object (:class:`taa.train.steps.TaaStep` with the
defaults of ``taa adapt``), the same model and the same batch size. For the naive
pipeline each collated batch is handed to the step as a one-batch split (the step then
takes rows ``0..B-1`` of it, the same one ``index_select`` the fast pipeline does). The
two are timed in alternating rounds in one process; the best round of each is kept.
Each round also times the step alone on one fixed batch pair (no data path at all): its
rate over the naive rate is the most any way of feeding the step could gain (``ceiling``).
Each naive round starts fresh loader iterators (so idle workers never run during a fast
round) and excludes its first step, which waits for the workers to start.

Run: ``.venv/bin/python benchmarks/bench_naive.py [--workers 2] [--batch-size 2048]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from taa.data.batches import TensorSplit

Row = tuple[np.ndarray, np.ndarray, np.ndarray]


class RowDataset(Dataset):
    """One row per ``__getitem__``: categorical ``[F]`` int64, numerical ``[N]`` and labels ``[T]``.

    Example:
        >>> split = _common.synthetic_split(4, _common.aliexpress_spec(), seed=0)
        >>> [part.shape for part in RowDataset(split)[0]]
        [(16,), (63,), (2,)]
    """

    def __init__(self, split: TensorSplit) -> None:
        self.categorical = split.categorical.numpy()
        self.numerical = split.numerical.numpy()
        self.labels = split.labels.numpy()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Row:
        return self.categorical[index], self.numerical[index], self.labels[index]


def loader(split: TensorSplit, batch_size: int, workers: int, seed: int) -> DataLoader:
    """A shuffling DataLoader over :class:`RowDataset` with the default collate."""
    return DataLoader(
        RowDataset(split),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )


def paired_batches(
    source: DataLoader, target: DataLoader
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Endless (source, target) batch pairs; each loader restarts when it runs out."""
    source_iterator, target_iterator = iter(source), iter(target)
    while True:
        try:
            source_batch = next(source_iterator)
        except StopIteration:
            source_iterator = iter(source)
            source_batch = next(source_iterator)
        try:
            target_batch = next(target_iterator)
        except StopIteration:
            target_iterator = iter(target)
            target_batch = next(target_iterator)
        yield source_batch, target_batch


def as_split(batch: list[torch.Tensor]) -> TensorSplit:
    categorical, numerical, labels = batch
    groups = torch.zeros(len(labels), dtype=torch.int64)
    return TensorSplit(categorical, numerical, labels, groups)


def time_naive(bundle: _common.StepBundle, args: argparse.Namespace, device: torch.device) -> float:
    """Seconds per step of ``bundle.step`` fed by fresh per-row DataLoaders (one round)."""
    step = bundle.step
    rows = torch.arange(args.batch_size)
    source_loader = loader(bundle.source, args.batch_size, args.workers, args.seed)
    target_loader = loader(bundle.target, args.batch_size, args.workers, args.seed + 1)
    pairs = paired_batches(source_loader, target_loader)

    def naive() -> None:
        source_batch, target_batch = next(pairs)
        step.source, step.target = as_split(source_batch), as_split(target_batch)
        step(rows, rows)

    try:
        return _common.timed_steps(naive, args.steps, 1, device)
    finally:
        pairs.close()  # ends the loader iterators, so their workers exit
        step.source, step.target = bundle.source, bundle.target


def time_step_only(
    bundle: _common.StepBundle, args: argparse.Namespace, device: torch.device
) -> float:
    """Seconds per step of ``bundle.step`` on one fixed batch pair: no data path at all.

    No pipeline can feed the step faster than this, so ``batch / this`` over the naive
    pipeline's rows per second bounds the speed-up any data path can give.
    """
    step = bundle.step
    rows = torch.arange(args.batch_size)

    def fixed(split: TensorSplit) -> TensorSplit:
        return TensorSplit(
            split.categorical[rows], split.numerical[rows], split.labels[rows], split.groups[rows]
        )

    step.source, step.target = fixed(bundle.source), fixed(bundle.target)
    try:
        return _common.timed_steps(lambda: step(rows, rows), args.steps, 0, device)
    finally:
        step.source, step.target = bundle.source, bundle.target


def time_naive_with_torch_defaults(argv: list[str]) -> float:
    """One naive round in a child process that runs with torch's default OpenMP waiting.

    Published training scripts leave ``OMP_WAIT_POLICY`` unset, so their compute threads
    spin while they wait, also while the DataLoader workers need the same cores. The child
    builds the same model, step and data from the same seed.
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    environment[_common.KEEP_OPENMP_DEFAULTS] = "1"
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *argv, "--naive-only"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the naive child process failed:\n{completed.stderr[-2000:]}")
    return float(json.loads(completed.stdout.strip().splitlines()[-1])["seconds_per_step"])


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Time the fast and the naive pipeline on the same step; returns the figures.

    With ``argv`` (this benchmark's own arguments) each round also times the naive
    pipeline in a child process with torch's default OpenMP settings.
    """
    device = _common.resolve_device(args.device)
    bundle = _common.build_taa_step(
        args, device, source_rows=args.source_rows, target_rows=args.target_rows
    )
    bundle.run_one()
    fast_seconds, naive_seconds, default_seconds, bare_seconds = [], [], [], []
    for _ in range(max(args.rounds, 1)):
        fast_seconds.append(_common.timed_steps(bundle.run_one, args.steps, 0, device))
        bare_seconds.append(time_step_only(bundle, args, device))
        naive_seconds.append(time_naive(bundle, args, device))
        time.sleep(0.2)  # let the exiting workers leave the CPU before the next round
        if argv is not None:
            default_seconds.append(time_naive_with_torch_defaults(argv))
    fast_rate = args.batch_size / min(fast_seconds)
    naive_rate = args.batch_size / min(naive_seconds)
    figures: dict[str, Any] = {
        "benchmark": "naive",
        "model": args.model,
        "size": args.size,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "fast_rows_per_second": fast_rate,
        "naive_rows_per_second": naive_rate,
        "speedup": fast_rate / naive_rate,
        "fast_seconds_per_step": min(fast_seconds),
        "naive_seconds_per_step": min(naive_seconds),
        "step_only_rows_per_second": args.batch_size / min(bare_seconds),
        "ceiling": args.batch_size / min(bare_seconds) / naive_rate,
    }
    if default_seconds:
        default_rate = args.batch_size / min(default_seconds)
        figures["naive_torch_defaults_rows_per_second"] = default_rate
        figures["speedup_vs_torch_defaults"] = fast_rate / default_rate
    return figures


def report(figures: dict[str, Any]) -> str:
    line = (
        f"naive     {figures['model']} ({figures['size']} sizes) {figures['precision']} batch "
        f"{figures['batch_size']}: taa batches {figures['fast_rows_per_second']:,.0f} target "
        f"rows/s vs per-row DataLoader ({figures['workers']} workers per domain) "
        f"{figures['naive_rows_per_second']:,.0f} target rows/s = {figures['speedup']:.2f}x; "
        f"the step alone on one fixed batch (no data path) "
        f"{figures['step_only_rows_per_second']:,.0f} target rows/s, so no data path can "
        f"beat the naive one by more than {figures['ceiling']:.2f}x"
    )
    if "speedup_vs_torch_defaults" in figures:
        line += (
            f"; the same DataLoader pipeline in a process with torch's default OpenMP "
            f"waiting: {figures['naive_torch_defaults_rows_per_second']:,.0f} target rows/s "
            f"= {figures['speedup_vs_torch_defaults']:.2f}x"
        )
    return line


def parser() -> argparse.ArgumentParser:
    result = _common.common_arguments(argparse.ArgumentParser(description=__doc__))
    result.add_argument("--source-rows", type=int, default=65536, help="source split rows")
    result.add_argument("--target-rows", type=int, default=16384, help="target sample rows")
    result.add_argument("--workers", type=int, default=2, help="DataLoader workers per domain")
    result.add_argument(
        "--torch-defaults",
        action="store_true",
        help="also time the naive pipeline in a child process with torch's OpenMP defaults",
    )
    result.add_argument("--naive-only", action="store_true", help=argparse.SUPPRESS)
    result.set_defaults(steps=3, rounds=3)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    _common.set_threads(args.threads)
    if args.naive_only:
        device = _common.resolve_device(args.device)
        bundle = _common.build_taa_step(
            args, device, source_rows=args.source_rows, target_rows=args.target_rows
        )
        figures = {"seconds_per_step": time_naive(bundle, args, device)}
        _common.emit(json.dumps(figures))
        return figures
    child = [item for item in argv if item != "--torch-defaults"]
    figures = run(args, child if args.torch_defaults else None)
    _common.emit(report(figures))
    return figures


if __name__ == "__main__":
    main()

"""Whole splits as tensors, and batches cut from them by slicing a seeded permutation.

There is no per-row ``Dataset`` and no collation: a split is loaded once into four
tensors, and a batch is an ``index_select`` of a slice of a permutation. A source/target
pairing cycles the shorter domain so that every step sees equal-sized batches of both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taa.data.schema import Schema
from taa.errors import ConfigError, DataError


@dataclass
class Batch:
    """One batch of rows.

    Attributes:
        categorical: category indices, int64 ``[B, F]``.
        numerical: numerical features, float32 ``[B, N]``.
        labels: task labels in schema order, float32 ``[B, T]``.
        groups: group key (``search_id``), int64 ``[B]``.
    """

    categorical: torch.Tensor
    numerical: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor

    def __len__(self) -> int:
        return int(self.categorical.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            categorical=self.categorical.to(device, non_blocking=non_blocking),
            numerical=self.numerical.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            groups=self.groups.to(device, non_blocking=non_blocking),
        )


@dataclass
class TensorSplit(Batch):
    """A whole split held as tensors; ``take(index)`` and ``slice(a, b)`` cut batches from it."""

    def take(self, index: torch.Tensor) -> Batch:
        """Rows at ``index`` (int64 ``[B]``) as a :class:`Batch`."""
        return Batch(
            categorical=self.categorical.index_select(0, index),
            numerical=self.numerical.index_select(0, index),
            labels=self.labels.index_select(0, index),
            groups=self.groups.index_select(0, index),
        )

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as a :class:`Batch` (views, no copy)."""
        return Batch(
            categorical=self.categorical[start:stop],
            numerical=self.numerical[start:stop],
            labels=self.labels[start:stop],
            groups=self.groups[start:stop],
        )

    def subset(self, index: torch.Tensor) -> TensorSplit:
        """Rows at ``index`` as a new :class:`TensorSplit`."""
        batch = self.take(index)
        return TensorSplit(batch.categorical, batch.numerical, batch.labels, batch.groups)

    @classmethod
    def from_arrays(cls, columns: dict[str, Any], schema: Schema) -> TensorSplit:
        """Build a split from column arrays (NumPy or anything ``np.asarray`` accepts)."""
        rows = len(columns[schema.group_key]) if schema.group_key in columns else None

        def stack(names: list[str], dtype: np.dtype) -> np.ndarray:
            if not names:
                return np.zeros((rows or 0, 0), dtype=dtype)
            return np.stack([np.asarray(columns[name], dtype=dtype) for name in names], axis=1)

        categorical = stack(schema.categorical_names, np.dtype(np.int64))
        count = categorical.shape[0]
        # a copy: Arrow hands out read-only arrays, which torch must not wrap
        groups = (
            np.array(columns[schema.group_key], dtype=np.int64)
            if schema.group_key in columns
            else np.arange(count, dtype=np.int64)
        )
        labels = (
            stack(list(schema.tasks), np.dtype(np.float32))
            if all(task in columns for task in schema.tasks)
            else np.full((count, len(schema.tasks)), np.nan, dtype=np.float32)
        )
        return cls(
            categorical=torch.from_numpy(categorical),
            numerical=torch.from_numpy(stack(schema.numerical_names, np.dtype(np.float32))),
            labels=torch.from_numpy(labels),
            groups=torch.from_numpy(groups),
        )


def split_path(dataset: str | Path, domain: str, split: str) -> Path:
    """Path of a split's Parquet file: ``DATASET/<domain>/<split>.parquet``.

    ``split`` is ``train``, ``test`` or a sample split such as ``samples/f0.01-s0/train``.
    """
    return Path(dataset) / domain / f"{split}.parquet"


def load_split(
    dataset: str | Path, domain: str, split: str, schema: Schema | None = None
) -> TensorSplit:
    """Load one prepared split whole into tensors.

    Args:
        dataset: prepared dataset folder (made by ``taa prepare``).
        domain: domain name, one of ``schema.domains``.
        split: ``train``, ``test`` or a sample split (``samples/<name>/train``).
        schema: the dataset's schema; read from ``dataset`` when omitted.

    Returns:
        The split with categorical ``[R, F]``, numerical ``[R, N]``, labels ``[R, T]``
        and groups ``[R]`` for its ``R`` rows.
    """
    import pyarrow.parquet as pq

    schema = schema or Schema.load(dataset)
    if schema.domains and domain not in schema.domains:
        raise DataError(
            f"{dataset}: domain {domain!r} is not in this dataset; "
            f"choose one of {list(schema.domains)}"
        )
    path = split_path(dataset, domain, split)
    if not path.is_file():
        domain_dir = Path(dataset) / domain
        available = sorted(
            item.relative_to(domain_dir).with_suffix("").as_posix()
            for item in domain_dir.rglob("*.parquet")
        )
        raise DataError(
            f"{path}: split {split!r} of domain {domain!r} does not exist; "
            f"available: {available or 'none'} (run `taa sample` to make a sample split)"
        )
    table = pq.read_table(path)
    missing = [name for name in schema.feature_columns if name not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; re-run `taa prepare`")
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    return TensorSplit.from_arrays(columns, schema)


class IndexStream:
    """An endless stream of row indices: successive seeded permutations of ``range(size)``.

    Its state (generator, current permutation, position) can be saved and restored, so an
    interrupted run resumes on exactly the batches it would have seen.

    Example:
        >>> stream = IndexStream(3, seed=0)
        >>> sorted(stream.next(3).tolist())
        [0, 1, 2]
        >>> len(stream.next(5))
        5
    """

    def __init__(self, size: int, seed: int, shuffle: bool = True) -> None:
        if size < 1:
            raise DataError("cannot draw batches from an empty split (0 rows)")
        self.size = size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.order = self._new_order()
        self.position = 0

    def _new_order(self) -> torch.Tensor:
        if self.shuffle:
            return torch.randperm(self.size, generator=self.generator)
        return torch.arange(self.size)

    def next(self, count: int) -> torch.Tensor:
        """The next ``count`` indices (int64 ``[count]``), starting new permutations as needed."""
        if count < 0:
            raise ConfigError(f"cannot draw a negative number of indices, got {count}")
        if count == 0:
            return torch.empty(0, dtype=torch.int64)
        pieces = []
        needed = count
        while needed > 0:
            if self.position >= self.size:
                self.order = self._new_order()
                self.position = 0
            take = min(needed, self.size - self.position)
            pieces.append(self.order[self.position : self.position + take])
            self.position += take
            needed -= take
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "order": self.order.clone(),
            "position": torch.tensor(self.position),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["order"]) != self.size:
            raise DataError(
                f"saved index stream covers {len(state['order'])} rows but this split has "
                f"{self.size}; resume on the split the run was started with"
            )
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])


def epoch_slices(size: int, batch_size: int, *, training: bool) -> list[tuple[int, int]]:
    """Boundaries of the batches of one pass over ``size`` rows.

    In training a trailing batch of a single row is merged into the one before it, since
    BatchNorm cannot normalise one row; evaluation keeps every size.

    Example:
        >>> epoch_slices(5, 2, training=True)
        [(0, 2), (2, 5)]
        >>> epoch_slices(5, 2, training=False)
        [(0, 2), (2, 4), (4, 5)]
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if training and batch_size < 2:
        raise ConfigError(
            f"training batch size must be at least 2 (BatchNorm needs two rows), got {batch_size}"
        )
    bounds = [(start, min(start + batch_size, size)) for start in range(0, size, batch_size)]
    if training and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def iterate_batches(
    split: TensorSplit,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    training: bool = False,
) -> Iterator[Batch]:
    """One pass over ``split`` in batches, shuffled by a seeded permutation if asked.

    A training pass never yields a one-row batch (see :func:`epoch_slices`); a split of
    a single row cannot be trained on and raises :class:`DataError`.
    """
    size = len(split)
    if training and size < 2:
        raise DataError(f"a training split needs at least 2 rows, got {size}")
    if not shuffle:
        for start, stop in epoch_slices(size, batch_size, training=training):
            yield split.slice(start, stop)
        return
    order = torch.randperm(size, generator=generator)
    for start, stop in epoch_slices(size, batch_size, training=training):
        yield split.take(order[start:stop])


class PairedSampler:
    """Pairs source and target batches of equal size, cycling the shorter domain.

    Each step draws ``batch_size`` rows from each domain's :class:`IndexStream`; a domain
    that runs out starts a fresh permutation, so every step has full batches from both.
    By default one epoch is as many steps as the longer domain needs
    (``ceil(max(source, target) / batch_size)``); adaptation passes ``steps`` to make an
    epoch one pass over the target sample instead.

    Example:
        >>> sampler = PairedSampler(10, 3, batch_size=2, seed=0)
        >>> [(len(s), len(t)) for s, t in sampler.epoch()]
        [(2, 2), (2, 2), (2, 2), (2, 2), (2, 2)]
    """

    def __init__(self, source_size: int, target_size: int, batch_size: int, seed: int) -> None:
        if batch_size < 2:
            raise ConfigError(f"batch size must be at least 2 for training, got {batch_size}")
        self.batch_size = batch_size
        self.source = IndexStream(source_size, seed=seed)
        self.target = IndexStream(target_size, seed=seed + 1)
        self.default_steps = math.ceil(max(source_size, target_size) / batch_size)

    def epoch(self, steps: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(source_index, target_index)`` pairs, each int64 ``[batch_size]``."""
        for _ in range(self.default_steps if steps is None else steps):
            yield self.source.next(self.batch_size), self.target.next(self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        return {"source": self.source.state_dict(), "target": self.target.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self.target.load_state_dict(state["target"])

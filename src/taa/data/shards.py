"""Reading prepared Parquet splits in parts: a rank's row range, or a stream of shuffled batches.

Two needs share this module:

* data-parallel training, where rank ``r`` of ``W`` loads only its contiguous row range
  (:func:`shard_bounds`, :func:`load_split_shard`) instead of the whole split, reading only
  the Parquet row groups that overlap it;
* training on splits larger than memory (``--streaming``), where :class:`ParquetStream` reads
  row groups one chunk at a time, shuffles rows inside a bounded buffer with a seed, and
  yields batches, so peak memory depends on the buffer size, not on the split size.

The stream shuffles in two stages: the order of row groups is a seeded permutation, and rows
are mixed inside a buffer of ``buffer_rows`` rows. That is weaker than a full permutation of
the split (two rows far apart in the file meet in one batch only if their row groups are
read close together), which is the usual price of bounded memory; a buffer several times
the batch size and files written in many row groups keep batches well mixed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from taa.data.batches import Batch, TensorSplit, epoch_slices, split_path
from taa.data.schema import Schema
from taa.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

DEFAULT_BUFFER_ROWS = 65_536
DEFAULT_READ_ROWS = 8_192


def shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous row range ``[start, stop)`` of ``rank`` among ``world_size`` ranks.

    Ranges differ in length by at most one row and together cover ``range(rows)`` once.

    Example:
        >>> [shard_bounds(10, rank, 3) for rank in range(3)]
        [(0, 4), (4, 7), (7, 10)]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(
            f"rank {rank} is not in range for a world of {world_size} processes; "
            "launch with torchrun, which sets RANK and WORLD_SIZE consistently"
        )
    base, extra = divmod(rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def resolve_split(dataset: str | Path, domain: str, split: str, schema: Schema) -> Path:
    """Path of a prepared split after checking the domain, the file and its columns."""
    import pyarrow.parquet as pq

    if schema.domains and domain not in schema.domains:
        raise DataError(
            f"{dataset}: domain {domain!r} is not in this dataset; "
            f"choose one of {list(schema.domains)}"
        )
    path = split_path(dataset, domain, split)
    if not path.is_file():
        raise DataError(
            f"{path}: split {split!r} of domain {domain!r} does not exist; check the split "
            "name (train, test or samples/<name>/train) or run `taa prepare` / `taa sample`"
        )
    names = pq.ParquetFile(path).schema_arrow.names
    missing = [name for name in schema.feature_columns if name not in names]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; re-run `taa prepare`")
    return path


def _columns(schema: Schema, available: list[str]) -> list[str]:
    wanted = [schema.group_key, *schema.feature_columns, *schema.tasks]
    return [name for name in wanted if name in available]


def _writable(column: object) -> np.ndarray:
    # Arrow hands out read-only buffers; torch warns on those, so take a private copy.
    return np.array(column.to_numpy(), copy=True)  # type: ignore[attr-defined]


def parquet_rows(path: str | Path) -> int:
    """Row count of a Parquet file, read from its footer only."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def read_rows(path: str | Path, start: int, stop: int, schema: Schema) -> TensorSplit:
    """Rows ``start:stop`` of a Parquet file as a split, reading only the row groups they span.

    Returns:
        A split of ``stop - start`` rows: categorical ``[R, F]``, numerical ``[R, N]``,
        labels ``[R, T]`` (NaN when the file has no labels), groups ``[R]``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    total = parquet.metadata.num_rows
    if not 0 <= start <= stop <= total:
        raise DataError(f"{path}: row range [{start}, {stop}) is outside its {total} rows")
    columns = _columns(schema, parquet.schema_arrow.names)
    pieces = []
    offset = 0
    for index in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(index).num_rows
        low, high = max(start, offset), min(stop, offset + size)
        if low < high:
            group = parquet.read_row_group(index, columns=columns)
            pieces.append(group.slice(low - offset, high - low))
        offset += size
    table = pa.concat_tables(pieces) if pieces else parquet.schema_arrow.empty_table()
    return TensorSplit.from_arrays(
        {name: _writable(table.column(name)) for name in columns}, schema
    )


def load_split_shard(
    dataset: str | Path,
    domain: str,
    split: str,
    *,
    rank: int,
    world_size: int,
    schema: Schema | None = None,
) -> TensorSplit:
    """Load rank ``rank``'s contiguous share of a prepared split (see :func:`shard_bounds`).

    With ``world_size=1`` this is the whole split, as :func:`taa.data.batches.load_split`
    gives it.
    """
    schema = schema or Schema.load(dataset)
    path = resolve_split(dataset, domain, split, schema)
    start, stop = shard_bounds(parquet_rows(path), rank, world_size)
    logger.debug("rank %d/%d reads rows [%d, %d) of %s", rank, world_size, start, stop, path)
    return read_rows(path, start, stop, schema)


@dataclass
class _Chunk:
    categorical: np.ndarray
    numerical: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.groups)

    @staticmethod
    def concat(chunks: list[_Chunk]) -> _Chunk:
        return _Chunk(
            *(np.concatenate([getattr(c, name) for c in chunks]) for name in _CHUNK_FIELDS)
        )

    def take(self, index: np.ndarray) -> _Chunk:
        return _Chunk(*(getattr(self, name)[index] for name in _CHUNK_FIELDS))

    def batch(self, index: np.ndarray) -> Batch:
        return Batch(*(torch.from_numpy(getattr(self, name)[index]) for name in _CHUNK_FIELDS))


_CHUNK_FIELDS = ("categorical", "numerical", "labels", "groups")


class ParquetStream:
    """Seeded, shuffled batches streamed from one Parquet file with bounded memory.

    Rows are read ``read_rows`` at a time from row groups taken in a seeded order and
    shuffled inside a buffer of at least ``buffer_rows`` rows (and two batches). An epoch
    yields exactly the batch sizes :func:`~taa.data.batches.epoch_slices` gives for the
    row count, so a training epoch never ends on a one-row batch. Memory held is about
    ``max(buffer_rows, 2 * batch_size) + read_rows`` rows, whatever the file's size.

    Args:
        path: a prepared split's Parquet file.
        schema: the dataset's schema.
        batch_size: rows per batch.
        seed: seed of the shuffles; epoch ``e`` uses ``(seed, e)``.
        buffer_rows: rows mixed together before batches are cut.
        read_rows: rows decoded from the file at a time.
        row_range: only rows ``[start, stop)`` (a rank's shard); the whole file by default.
        shuffle: False reads rows in file order (for evaluation).
        exclude: optional boolean mask over the file's rows (``[rows]``); rows marked True
            are skipped (the validation rows held out of a streamed training split).

    Example:
        >>> stream = ParquetStream(path, schema, batch_size=1024, seed=0)  # doctest: +SKIP
        >>> for batch in stream.epoch(0): ...  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        schema: Schema,
        *,
        batch_size: int,
        seed: int = 0,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
        read_rows: int = DEFAULT_READ_ROWS,
        row_range: tuple[int, int] | None = None,
        shuffle: bool = True,
        exclude: np.ndarray | None = None,
    ) -> None:
        import pyarrow.parquet as pq

        for name, value in (
            ("batch_size", batch_size),
            ("buffer_rows", buffer_rows),
            ("read_rows", read_rows),
        ):
            if value < 1:
                raise ConfigError(f"streaming option {name} must be at least 1, got {value}")
        self.path = Path(path)
        self.schema = schema
        self.batch_size = batch_size
        self.seed = seed
        self.flush_rows = max(buffer_rows, 2 * batch_size)
        self.read_rows = read_rows
        self.shuffle = shuffle
        metadata = pq.ParquetFile(self.path).metadata
        total = metadata.num_rows
        self.start, self.stop = row_range if row_range is not None else (0, total)
        if not 0 <= self.start <= self.stop <= total:
            raise DataError(
                f"{self.path}: row range [{self.start}, {self.stop}) is outside its {total} rows"
            )
        self._groups: list[tuple[int, int, int]] = []  # (row group, first row, rows)
        offset = 0
        for index in range(metadata.num_row_groups):
            size = metadata.row_group(index).num_rows
            if max(self.start, offset) < min(self.stop, offset + size):
                self._groups.append((index, offset, size))
            offset += size
        self.peak_buffered_rows = 0
        if exclude is not None and len(exclude) != total:
            raise DataError(
                f"{self.path}: the exclusion mask has {len(exclude)} entries for {total} rows"
            )
        self.exclude = exclude
        skipped = int(exclude[self.start : self.stop].sum()) if exclude is not None else 0
        self._rows = self.stop - self.start - skipped

    @property
    def rows(self) -> int:
        """Rows one epoch covers."""
        return self._rows

    def num_batches(self, *, training: bool = True) -> int:
        """Batches one epoch yields."""
        return len(epoch_slices(self.rows, self.batch_size, training=training))

    def _chunks(self, generator: np.random.Generator) -> Iterator[_Chunk]:
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(self.path)
        columns = _columns(self.schema, parquet.schema_arrow.names)
        order = (
            generator.permutation(len(self._groups)) if self.shuffle else range(len(self._groups))
        )
        for position in order:
            index, offset, _ = self._groups[int(position)]
            for record_batch in parquet.iter_batches(
                batch_size=self.read_rows, row_groups=[index], columns=columns
            ):
                low, high = max(self.start, offset), min(self.stop, offset + record_batch.num_rows)
                if low < high:
                    part = record_batch.slice(low - offset, high - low)
                    arrays = {name: _writable(part.column(name)) for name in columns}
                    split = TensorSplit.from_arrays(arrays, self.schema)
                    chunk = _Chunk(*(getattr(split, name).numpy() for name in _CHUNK_FIELDS))
                    if self.exclude is not None:
                        chunk = chunk.take(np.flatnonzero(~self.exclude[low:high]))
                    if len(chunk):
                        yield chunk
                offset += record_batch.num_rows

    def epoch(self, epoch: int = 0, *, training: bool = True) -> Iterator[Batch]:
        """One pass over the rows in batches, shuffled with ``(seed, epoch)``.

        Yields:
            :class:`~taa.data.batches.Batch` objects of ``batch_size`` rows, the last one
            possibly shorter (or up to one row longer in training).
        """
        if training and self.rows < 2:
            raise DataError(f"{self.path}: a training split needs at least 2 rows, got {self.rows}")
        generator = np.random.Generator(np.random.PCG64([self.seed, epoch]))
        buffer: list[_Chunk] = []
        buffered = 0
        for chunk in self._chunks(generator):
            buffer.append(chunk)
            buffered += len(chunk)
            self.peak_buffered_rows = max(self.peak_buffered_rows, buffered)
            if buffered < self.flush_rows:
                continue
            merged = _Chunk.concat(buffer)
            order = generator.permutation(buffered) if self.shuffle else np.arange(buffered)
            # Hold back the last full batch with the remainder so the epoch's tail is cut
            # exactly as epoch_slices cuts it.
            emit = (buffered // self.batch_size - 1) * self.batch_size
            for start in range(0, emit, self.batch_size):
                yield merged.batch(order[start : start + self.batch_size])
            buffer = [merged.take(order[emit:])]
            buffered -= emit
        if buffered:
            merged = _Chunk.concat(buffer)
            order = generator.permutation(buffered) if self.shuffle else np.arange(buffered)
            for start, stop in epoch_slices(buffered, self.batch_size, training=training):
                yield merged.batch(order[start:stop])


def label_index_split(path: str | Path, schema: Schema) -> TensorSplit:
    """The group key and labels of every row of a file, with row numbers for features.

    Reads only those columns (about 16 bytes a row), so a holdout can be drawn over a
    split too large to load whole. ``categorical[:, 0]`` holds each row's number in the
    file and ``numerical`` is empty ``[R, 0]``; any subset keeps the row numbers.
    """
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    available = parquet.schema_arrow.names
    columns = [name for name in [schema.group_key, *schema.tasks] if name in available]
    table = parquet.read(columns=columns)
    rows = table.num_rows
    groups = (
        table.column(schema.group_key).to_numpy().astype(np.int64)
        if schema.group_key in available
        else np.arange(rows, dtype=np.int64)
    )
    labels = (
        np.stack([table.column(task).to_numpy().astype(np.float32) for task in schema.tasks], 1)
        if all(task in available for task in schema.tasks)
        else np.full((rows, len(schema.tasks)), np.nan, dtype=np.float32)
    )
    return TensorSplit(
        categorical=torch.arange(rows, dtype=torch.int64).unsqueeze(1),
        numerical=torch.zeros(rows, 0),
        labels=torch.from_numpy(labels),
        groups=torch.from_numpy(groups),
    )


def read_selected_rows(path: str | Path, rows: np.ndarray, schema: Schema) -> TensorSplit:
    """The rows numbered ``rows`` (sorted, unique) of a file, reading one row group at a time.

    Returns:
        A split of ``len(rows)`` rows in the order of ``rows``.
    """
    import pyarrow.parquet as pq

    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) and (np.any(np.diff(rows) <= 0) or rows[0] < 0):
        raise DataError(f"{path}: selected row numbers must be sorted, unique and >= 0")
    parquet = pq.ParquetFile(path)
    if len(rows) and rows[-1] >= parquet.metadata.num_rows:
        raise DataError(
            f"{path}: row {int(rows[-1])} selected but the file has "
            f"{parquet.metadata.num_rows} rows"
        )
    columns = _columns(schema, parquet.schema_arrow.names)
    pieces: list[TensorSplit] = []
    offset = 0
    for index in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(index).num_rows
        low, high = np.searchsorted(rows, [offset, offset + size])
        if low < high:
            group = parquet.read_row_group(index, columns=columns).take(rows[low:high] - offset)
            arrays = {name: _writable(group.column(name)) for name in columns}
            pieces.append(TensorSplit.from_arrays(arrays, schema))
        offset += size
    if not pieces:
        return read_rows(path, 0, 0, schema)
    return TensorSplit(
        *(torch.cat([getattr(piece, name) for piece in pieces]) for name in _CHUNK_FIELDS)
    )


class StreamPlan:
    """A training loop's batch plan over a :class:`ParquetStream`: one pass per epoch.

    Yields ``(batch,)`` tuples of :class:`~taa.data.batches.Batch` (not indices); epoch
    ``e`` is shuffled with ``(seed, e)`` only, so the plan has no state to save and a
    resumed run sees the batches an uninterrupted one would.
    """

    def __init__(self, stream: ParquetStream, steps: int | None = None) -> None:
        self.stream = stream
        self.steps = steps if steps is not None else stream.num_batches(training=True)

    def epoch(self, epoch: int) -> Iterator[tuple[Batch]]:
        for step, batch in enumerate(self.stream.epoch(epoch)):
            if step >= self.steps:
                return
            yield (batch,)

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        pass


class StreamedSource:
    """An endless supply of source rows from a :class:`ParquetStream`, pass after pass.

    ``next(count)`` returns exactly ``count`` rows (a paired step needs as many source as
    target rows), cutting across the stream's batches. Its position (pass number, rows
    taken in it) is saved with the run, and restoring it replays the stream to the same
    row, so a resumed adaptation draws the same source rows.
    """

    def __init__(self, stream: ParquetStream) -> None:
        self.stream = stream
        self.passes = 0
        self.consumed = 0
        self._iterator: Iterator[Batch] | None = None
        self._pending: Batch | None = None

    def _open_pass(self) -> None:
        self._iterator = self.stream.epoch(self.passes)
        skipped = 0
        self._pending = None
        while skipped < self.consumed:
            batch = next(self._iterator, None)
            if batch is None:
                break
            if skipped + len(batch) > self.consumed:
                self._pending = _cut(batch, self.consumed - skipped, len(batch))
            skipped += len(batch)

    def _refill(self) -> Batch:
        while True:
            if self._iterator is None:
                self._open_pass()
                if self._pending is not None and len(self._pending):
                    return self._pending
            if self._iterator is None:
                raise RuntimeError("ParquetStream: no open pass after _open_pass (a bug)")
            batch = next(self._iterator, None)
            if batch is not None:
                return batch
            self.passes += 1
            self.consumed = 0
            self._iterator = None

    def next(self, count: int) -> Batch:
        """The next ``count`` rows, starting a new shuffled pass whenever one is used up."""
        pieces = []
        needed = count
        while needed > 0:
            if self._pending is None or len(self._pending) == 0:
                self._pending = self._refill()
            take = min(needed, len(self._pending))
            pieces.append(_cut(self._pending, 0, take))
            self._pending = _cut(self._pending, take, len(self._pending))
            self.consumed += take
            needed -= take
        return Batch(*(torch.cat([getattr(p, name) for p in pieces]) for name in _CHUNK_FIELDS))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"passes": torch.tensor(self.passes), "consumed": torch.tensor(self.consumed)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.passes = int(state["passes"])
        self.consumed = int(state["consumed"])
        self._iterator = None
        self._pending = None


def _cut(batch: Batch, start: int, stop: int) -> Batch:
    return Batch(*(getattr(batch, name)[start:stop] for name in _CHUNK_FIELDS))


class PairedStreamPlan:
    """Adaptation's batch plan when the source split is streamed: each step pairs the
    target indices of ``target_plan`` with as many streamed source rows.

    Yields ``(source batch, target index)``; both parts' positions are saved with the run.
    """

    def __init__(self, target_plan: Any, source: StreamedSource) -> None:
        self.target_plan = target_plan
        self.source = source
        self.steps = target_plan.steps

    def epoch(self, epoch: int) -> Iterator[tuple[Batch, torch.Tensor]]:
        for (target_index,) in self.target_plan.epoch(epoch):
            yield self.source.next(len(target_index)), target_index

    def state_dict(self) -> dict[str, Any]:
        return {"target": self.target_plan.state_dict(), "source": self.source.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target_plan.load_state_dict(state["target"])
        self.source.load_state_dict(state["source"])

"""Tests of row-range shards and streamed batches from Parquet (taa.data.shards)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from taa.data.batches import epoch_slices, load_split
from taa.data.schema import CategoricalField, NumericalField, Schema
from taa.data.shards import (
    ParquetStream,
    StreamedSource,
    StreamPlan,
    label_index_split,
    load_split_shard,
    parquet_rows,
    read_rows,
    read_selected_rows,
    shard_bounds,
)
from taa.errors import ConfigError, DataError

SCHEMA = Schema(
    categorical=(CategoricalField("categorical_1", 8), CategoricalField("categorical_2", 4)),
    numerical=(NumericalField("numerical_1"),),
    tasks=("click", "conversion"),
    domains=("A",),
)


def _write_split(dataset: Path, rows: int, row_group_size: int) -> Path:
    """A prepared split whose search_id is the row number, so every row can be traced."""
    SCHEMA.save(dataset)
    ids = np.arange(rows, dtype=np.int64)
    table = pa.table(
        {
            "search_id": ids,
            "categorical_1": (ids % 7 + 1).astype(np.int32),
            "categorical_2": (ids % 3).astype(np.int32),
            "numerical_1": (ids / rows).astype(np.float32),
            "click": (ids % 2).astype(np.int8),
            "conversion": (ids % 4 == 0).astype(np.int8),
        }
    )
    path = dataset / "A" / "train.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_shard_bounds_split_ten_rows_over_three_ranks() -> None:
    """Check that 10 rows over 3 ranks give 4, 3 and 3 contiguous rows."""
    assert [shard_bounds(10, rank, 3) for rank in range(3)] == [(0, 4), (4, 7), (7, 10)]


def test_shard_bounds_leave_ranks_empty_when_rows_are_fewer() -> None:
    """Check that 2 rows over 3 ranks give the last rank an empty range, not an error."""
    assert [shard_bounds(2, rank, 3) for rank in range(3)] == [(0, 1), (1, 2), (2, 2)]


def test_shard_bounds_refuse_a_rank_outside_the_world() -> None:
    """Check that rank 2 of a world of 2 is refused with the launcher named."""
    with pytest.raises(ConfigError, match=r"rank 2 is not in range for a world of 2 .*torchrun"):
        shard_bounds(10, 2, 2)


def test_read_rows_across_row_groups_equals_a_slice_of_the_whole(tmp_path: Path) -> None:
    """Check that rows 5:23 read from groups of 7 rows equal rows 5:23 of the whole split."""
    path = _write_split(tmp_path, rows=30, row_group_size=7)
    whole = load_split(tmp_path, "A", "train", SCHEMA)
    part = read_rows(path, 5, 23, SCHEMA)
    assert part.groups.tolist() == list(range(5, 23))
    for name in ("categorical", "numerical", "labels"):
        assert torch.equal(getattr(part, name), getattr(whole, name)[5:23])


def test_rank_shards_concatenate_to_the_whole_split(tmp_path: Path) -> None:
    """Check that the three ranks' shards, in rank order, are exactly the whole split."""
    _write_split(tmp_path, rows=31, row_group_size=8)
    shards = [
        load_split_shard(tmp_path, "A", "train", rank=rank, world_size=3) for rank in range(3)
    ]
    assert [len(shard) for shard in shards] == [11, 10, 10]
    whole = load_split(tmp_path, "A", "train", SCHEMA)
    assert torch.equal(torch.cat([shard.categorical for shard in shards]), whole.categorical)
    assert torch.equal(torch.cat([shard.labels for shard in shards]), whole.labels)


def test_parquet_rows_reads_the_footer(tmp_path: Path) -> None:
    """Check that the row count comes from the file's footer."""
    assert parquet_rows(_write_split(tmp_path, rows=17, row_group_size=5)) == 17


def test_shard_of_a_missing_split_names_the_file(tmp_path: Path) -> None:
    """Check that a missing split is refused with its path and the commands that make it."""
    _write_split(tmp_path, rows=4, row_group_size=4)
    with pytest.raises(DataError, match=r"test\.parquet: split 'test' of domain 'A' does not"):
        load_split_shard(tmp_path, "A", "test", rank=0, world_size=1)


def test_shard_of_an_unknown_domain_names_the_choices(tmp_path: Path) -> None:
    """Check that a domain outside the schema is refused with the known domains."""
    _write_split(tmp_path, rows=4, row_group_size=4)
    with pytest.raises(DataError, match=r"domain 'B' is not in this dataset; choose one of \['A'"):
        load_split_shard(tmp_path, "B", "train", rank=0, world_size=1)


def test_shard_with_a_missing_column_names_it(tmp_path: Path) -> None:
    """Check that a file without a schema column is refused naming the column."""
    path = _write_split(tmp_path, rows=4, row_group_size=4)
    pq.write_table(pq.read_table(path).drop(["numerical_1"]), path)
    with pytest.raises(DataError, match=r"missing columns \['numerical_1'\]; re-run `taa prepare`"):
        load_split_shard(tmp_path, "A", "train", rank=0, world_size=1)


def test_read_rows_refuses_a_range_past_the_end(tmp_path: Path) -> None:
    """Check that a row range beyond the file is refused with the file's row count."""
    path = _write_split(tmp_path, rows=4, row_group_size=4)
    with pytest.raises(DataError, match=r"row range \[2, 9\) is outside its 4 rows"):
        read_rows(path, 2, 9, SCHEMA)


@pytest.mark.parametrize("rows", [50, 51, 64])
def test_stream_epoch_covers_every_row_once_in_epoch_slices_sizes(
    tmp_path: Path, rows: int
) -> None:
    """Check that one epoch yields each row once, in the batch sizes epoch_slices gives."""
    path = _write_split(tmp_path, rows=rows, row_group_size=9)
    stream = ParquetStream(path, SCHEMA, batch_size=5, seed=3, buffer_rows=12, read_rows=4)
    batches = list(stream.epoch(0))
    expected_sizes = [stop - start for start, stop in epoch_slices(rows, 5, training=True)]
    assert [len(batch) for batch in batches] == expected_sizes
    assert sorted(torch.cat([batch.groups for batch in batches]).tolist()) == list(range(rows))
    assert stream.num_batches() == len(expected_sizes)


def test_stream_batch_rows_match_the_file(tmp_path: Path) -> None:
    """Check that every streamed row carries the features and labels of its row in the file."""
    path = _write_split(tmp_path, rows=40, row_group_size=6)
    whole = load_split(tmp_path, "A", "train", SCHEMA)
    for batch in ParquetStream(path, SCHEMA, batch_size=7, seed=1, buffer_rows=10).epoch(0):
        assert torch.equal(batch.categorical, whole.categorical[batch.groups])
        assert torch.equal(batch.numerical, whole.numerical[batch.groups])
        assert torch.equal(batch.labels, whole.labels[batch.groups])


def test_stream_is_seeded_per_epoch(tmp_path: Path) -> None:
    """Check that the same seed and epoch repeat the order, and another epoch changes it."""
    path = _write_split(tmp_path, rows=60, row_group_size=10)

    def order(seed: int, epoch: int) -> list[int]:
        stream = ParquetStream(path, SCHEMA, batch_size=8, seed=seed, buffer_rows=20)
        return torch.cat([batch.groups for batch in stream.epoch(epoch)]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_stream_mixes_rows_from_several_row_groups(tmp_path: Path) -> None:
    """Check that a batch draws rows from more than one row group once the buffer spans them."""
    path = _write_split(tmp_path, rows=100, row_group_size=10)
    stream = ParquetStream(path, SCHEMA, batch_size=10, seed=0, buffer_rows=40, read_rows=10)
    first = next(iter(stream.epoch(0)))
    assert len(set((first.groups // 10).tolist())) > 1


def test_stream_holds_a_bounded_number_of_rows(tmp_path: Path) -> None:
    """Check that the buffer never holds more than the flush size plus one read chunk."""
    path = _write_split(tmp_path, rows=500, row_group_size=50)
    stream = ParquetStream(path, SCHEMA, batch_size=8, seed=0, buffer_rows=32, read_rows=16)
    assert sum(len(batch) for batch in stream.epoch(0)) == 500
    assert 32 <= stream.peak_buffered_rows <= 32 + 16 + 8


def test_stream_over_a_row_range_reads_only_that_range(tmp_path: Path) -> None:
    """Check that a rank's row range streams exactly the rows of that range."""
    path = _write_split(tmp_path, rows=45, row_group_size=7)
    start, stop = shard_bounds(45, 1, 2)
    stream = ParquetStream(path, SCHEMA, batch_size=4, seed=0, row_range=(start, stop))
    rows = sorted(torch.cat([batch.groups for batch in stream.epoch(0)]).tolist())
    assert rows == list(range(start, stop))


def test_stream_without_shuffle_keeps_file_order(tmp_path: Path) -> None:
    """Check that shuffle=False yields rows in file order, with evaluation batch sizes."""
    path = _write_split(tmp_path, rows=21, row_group_size=4)
    stream = ParquetStream(path, SCHEMA, batch_size=5, shuffle=False, buffer_rows=6)
    batches = list(stream.epoch(0, training=False))
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 1]
    assert torch.cat([batch.groups for batch in batches]).tolist() == list(range(21))


def test_stream_refuses_a_zero_batch_size(tmp_path: Path) -> None:
    """Check that a batch size of 0 is refused naming the option."""
    path = _write_split(tmp_path, rows=4, row_group_size=4)
    with pytest.raises(ConfigError, match="streaming option batch_size must be at least 1, got 0"):
        ParquetStream(path, SCHEMA, batch_size=0)


def test_stream_refuses_to_train_on_one_row(tmp_path: Path) -> None:
    """Check that a training epoch over a single row is refused, as BatchNorm needs two."""
    path = _write_split(tmp_path, rows=4, row_group_size=4)
    stream = ParquetStream(path, SCHEMA, batch_size=2, row_range=(3, 4))
    with pytest.raises(DataError, match="a training split needs at least 2 rows, got 1"):
        next(iter(stream.epoch(0)))


def test_exclusion_mask_skips_the_marked_rows(tmp_path: Path) -> None:
    """Check that rows marked in the exclusion mask never appear and the epoch is shorter."""
    path = _write_split(tmp_path, rows=40, row_group_size=6)
    exclude = np.zeros(40, dtype=bool)
    exclude[[0, 5, 6, 17, 39]] = True
    stream = ParquetStream(path, SCHEMA, batch_size=4, seed=2, buffer_rows=8, exclude=exclude)
    rows = sorted(torch.cat([batch.groups for batch in stream.epoch(0)]).tolist())
    assert rows == [row for row in range(40) if not exclude[row]]
    assert stream.rows == 35 and stream.num_batches() == len(epoch_slices(35, 4, training=True))


def test_label_index_split_keeps_row_numbers_through_subsets(tmp_path: Path) -> None:
    """Check that the label-only split carries each row's number, labels and group."""
    path = _write_split(tmp_path, rows=12, row_group_size=5)
    split = label_index_split(path, SCHEMA)
    assert split.numerical.shape == (12, 0)
    subset = split.subset(torch.tensor([3, 7, 11]))
    assert subset.categorical[:, 0].tolist() == [3, 7, 11]
    assert subset.labels.tolist() == [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]  # odd rows click
    assert subset.groups.tolist() == [3, 7, 11]


def test_read_selected_rows_equals_indexing_the_whole(tmp_path: Path) -> None:
    """Check that scattered rows read group by group equal the same rows of the whole split."""
    path = _write_split(tmp_path, rows=30, row_group_size=7)
    whole = load_split(tmp_path, "A", "train", SCHEMA)
    rows = np.array([0, 6, 7, 8, 20, 29])
    part = read_selected_rows(path, rows, SCHEMA)
    assert part.groups.tolist() == rows.tolist()
    assert torch.equal(part.numerical, whole.numerical[rows])
    assert torch.equal(part.labels, whole.labels[rows])


def test_read_selected_rows_refuses_unsorted_rows(tmp_path: Path) -> None:
    """Check that row numbers out of order are refused."""
    path = _write_split(tmp_path, rows=10, row_group_size=5)
    with pytest.raises(DataError, match="selected row numbers must be sorted, unique and >= 0"):
        read_selected_rows(path, np.array([4, 2]), SCHEMA)


def test_stream_plan_yields_batches_for_the_loop(tmp_path: Path) -> None:
    """Check that the loop plan yields one-batch tuples, as many as it announces."""
    path = _write_split(tmp_path, rows=23, row_group_size=5)
    plan = StreamPlan(ParquetStream(path, SCHEMA, batch_size=5, seed=0))
    steps = list(plan.epoch(1))
    assert plan.steps == len(steps) == 5  # 5, 5, 5, 5 and 3 rows
    assert sum(len(batch) for (batch,) in steps) == 23


def test_streamed_source_gives_exact_counts_across_passes(tmp_path: Path) -> None:
    """Check that 7-row draws from a 10-row stream cut across batches and passes evenly."""
    path = _write_split(tmp_path, rows=10, row_group_size=4)
    source = StreamedSource(ParquetStream(path, SCHEMA, batch_size=4, seed=0, buffer_rows=4))
    drawn = [source.next(7).groups.tolist() for _ in range(10)]
    assert all(len(rows) == 7 for rows in drawn)
    flat = [row for rows in drawn for row in rows]
    for start in range(0, 70, 10):  # every pass of 10 rows holds each row once
        assert sorted(flat[start : start + 10]) == list(range(10))


def test_streamed_source_resumes_on_the_same_rows(tmp_path: Path) -> None:
    """Check that restoring a saved position replays the stream to the same next rows."""
    path = _write_split(tmp_path, rows=10, row_group_size=4)

    def fresh() -> StreamedSource:
        return StreamedSource(ParquetStream(path, SCHEMA, batch_size=4, seed=0, buffer_rows=4))

    first = fresh()
    for _ in range(3):
        first.next(3)
    state = first.state_dict()
    expected = [first.next(3).groups.tolist() for _ in range(4)]
    resumed = fresh()
    resumed.load_state_dict(state)
    assert [resumed.next(3).groups.tolist() for _ in range(4)] == expected

"""Tests of taa.data.batches: whole-split tensors, epoch batches, index streams and pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from taa.data.batches import (
    IndexStream,
    PairedSampler,
    TensorSplit,
    epoch_slices,
    iterate_batches,
    load_split,
)
from taa.data.schema import CategoricalField, NumericalField, Schema
from taa.errors import ConfigError, DataError

SCHEMA = Schema(
    categorical=(CategoricalField("categorical_1", 4), CategoricalField("categorical_2", 3)),
    numerical=(NumericalField("numerical_1"),),
    tasks=("click", "conversion"),
    domains=("A", "B"),
)


def make_split(rows: int) -> TensorSplit:
    """A split whose group key is the row number, so every batch says which rows it holds."""
    index = np.arange(rows)
    columns = {
        "search_id": index,
        "categorical_1": index % 4,
        "categorical_2": index % 3,
        "numerical_1": index / 10.0,
        "click": index % 2,
        "conversion": (index % 4 == 1).astype(int),
    }
    return TensorSplit.from_arrays(columns, SCHEMA)


def rows_of(batches: list) -> list[int]:
    return [int(row) for batch in batches for row in batch.groups]


def test_paired_sampler_gives_five_steps_of_two_and_two() -> None:
    """Check that 10 source rows, 3 target rows and batch 2 give 5 steps of 2 + 2 rows."""
    sampler = PairedSampler(10, 3, batch_size=2, seed=0)
    steps = list(sampler.epoch())
    assert [(len(source), len(target)) for source, target in steps] == [(2, 2)] * 5


def test_paired_sampler_covers_the_longer_domain_once_per_epoch() -> None:
    """Check that one default epoch draws each of the 10 source rows exactly once."""
    sampler = PairedSampler(10, 3, batch_size=2, seed=0)
    source = torch.cat([source for source, _ in sampler.epoch()])
    assert sorted(source.tolist()) == list(range(10))


def test_paired_sampler_cycles_the_shorter_domain_without_early_repeats() -> None:
    """Check that the 3 target rows all appear before any repeats, cycle after cycle."""
    sampler = PairedSampler(10, 3, batch_size=2, seed=0)
    target = torch.cat([target for _, target in sampler.epoch()]).tolist()
    assert len(target) == 10
    for start in (0, 3, 6):
        assert sorted(target[start : start + 3]) == [0, 1, 2]


def test_paired_sampler_runs_the_steps_asked_for() -> None:
    """Check that epoch(steps=3) yields 3 steps whatever the domain sizes."""
    sampler = PairedSampler(10, 3, batch_size=2, seed=0)
    assert len(list(sampler.epoch(steps=3))) == 3


def test_paired_sampler_seeds_make_draws_reproducible() -> None:
    """Check that two samplers with one seed draw the same indices, and another seed others."""

    def draws(seed: int) -> list[list[int]]:
        sampler = PairedSampler(50, 7, batch_size=4, seed=seed)
        return [s.tolist() + t.tolist() for s, t in sampler.epoch()]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_paired_sampler_rejects_a_batch_of_one() -> None:
    """Check that a batch size of 1 is refused with a message naming the value."""
    with pytest.raises(ConfigError, match="batch size must be at least 2 for training, got 1"):
        PairedSampler(10, 3, batch_size=1, seed=0)


def test_paired_sampler_state_round_trip_resumes_on_the_same_indices() -> None:
    """Check that a sampler restored from state_dict continues exactly where the saved one was."""
    sampler = PairedSampler(10, 3, batch_size=2, seed=4)
    list(sampler.epoch(steps=2))
    state = sampler.state_dict()
    expected = [(s.tolist(), t.tolist()) for s, t in sampler.epoch(steps=7)]
    restored = PairedSampler(10, 3, batch_size=2, seed=99)
    restored.load_state_dict(state)
    assert [(s.tolist(), t.tolist()) for s, t in restored.epoch(steps=7)] == expected


def test_index_stream_state_round_trip_resumes_on_the_same_indices() -> None:
    """Check that an IndexStream restored mid-permutation yields the indices the saved one would."""
    stream = IndexStream(7, seed=3)
    stream.next(5)
    state = stream.state_dict()
    expected = [stream.next(4).tolist() for _ in range(4)]  # crosses two permutation ends
    restored = IndexStream(7, seed=123)
    restored.load_state_dict(state)
    assert [restored.next(4).tolist() for _ in range(4)] == expected


def test_index_stream_state_is_not_changed_by_later_draws() -> None:
    """Check that a saved state is a copy: drawing on after saving does not alter it."""
    stream = IndexStream(6, seed=1)
    stream.next(4)
    state = stream.state_dict()
    order, position = state["order"].clone(), int(state["position"])
    stream.next(9)
    assert torch.equal(state["order"], order)
    assert int(state["position"]) == position


def test_index_stream_each_pass_is_a_permutation() -> None:
    """Check that every consecutive block of `size` indices holds each row once."""
    stream = IndexStream(5, seed=2)
    drawn = stream.next(15).tolist()
    for start in (0, 5, 10):
        assert sorted(drawn[start : start + 5]) == [0, 1, 2, 3, 4]


def test_index_stream_without_shuffle_counts_up() -> None:
    """Check that shuffle=False gives 0..size-1 in order, over and over."""
    assert IndexStream(3, seed=0, shuffle=False).next(7).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_index_stream_draws_zero_indices() -> None:
    """Check that next(0) gives an empty int64 tensor instead of failing."""
    empty = IndexStream(3, seed=0).next(0)
    assert empty.shape == (0,)
    assert empty.dtype == torch.int64


def test_index_stream_rejects_a_state_of_another_size() -> None:
    """Check that a state saved for 7 rows is refused by a stream over 5 rows."""
    state = IndexStream(7, seed=0).state_dict()
    with pytest.raises(DataError, match="covers 7 rows but this split has 5"):
        IndexStream(5, seed=0).load_state_dict(state)


def test_index_stream_rejects_an_empty_split() -> None:
    """Check that a stream over 0 rows is refused."""
    with pytest.raises(DataError, match="empty split"):
        IndexStream(0, seed=0)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("rows", [2, 3, 5, 7, 11])
@pytest.mark.parametrize("batch_size", [2, 3, 4])
def test_iterate_batches_training_has_no_one_row_batch(
    rows: int, batch_size: int, shuffle: bool
) -> None:
    """Check that a training pass never yields a 1-row batch and covers every row exactly once."""
    generator = torch.Generator().manual_seed(0)
    batches = list(
        iterate_batches(
            make_split(rows), batch_size, shuffle=shuffle, generator=generator, training=True
        )
    )
    assert min(len(batch) for batch in batches) >= 2
    assert sorted(rows_of(batches)) == list(range(rows))


def test_iterate_batches_training_merges_the_last_row_into_the_batch_before() -> None:
    """Check that 7 rows in batches of 3 train as 3 + 4 rows (the lone seventh row merged)."""
    batches = list(iterate_batches(make_split(7), 3, training=True))
    assert [len(batch) for batch in batches] == [3, 4]
    assert rows_of(batches) == list(range(7))


def test_iterate_batches_evaluation_keeps_every_size() -> None:
    """Check that evaluation yields batches of any size, a last batch of 1 row included."""
    batches = list(iterate_batches(make_split(7), 3, training=False))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert rows_of(batches) == list(range(7))


def test_iterate_batches_evaluation_takes_batches_of_one() -> None:
    """Check that evaluation accepts a batch size of 1 and a 1-row split."""
    assert [len(batch) for batch in iterate_batches(make_split(2), 1)] == [1, 1]
    assert [len(batch) for batch in iterate_batches(make_split(1), 4)] == [1]


def test_iterate_batches_shuffles_reproducibly() -> None:
    """Check that a seeded shuffle gives the same row order twice and not the identity."""

    def order(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return rows_of(list(iterate_batches(make_split(20), 6, shuffle=True, generator=generator)))

    assert order(1) == order(1)
    assert order(1) != list(range(20))


def test_iterate_batches_rejects_training_on_one_row() -> None:
    """Check that a 1-row split cannot be trained on."""
    with pytest.raises(DataError, match="at least 2 rows, got 1"):
        list(iterate_batches(make_split(1), 4, training=True))


def test_epoch_slices_rejects_a_training_batch_of_one() -> None:
    """Check that a training batch size of 1 is refused (it would give 1-row batches)."""
    with pytest.raises(
        ConfigError,
        match=r"training batch size must be at least 2 \(BatchNorm needs two rows\), got 1",
    ):
        epoch_slices(5, 1, training=True)


def test_epoch_slices_rejects_a_batch_size_of_zero() -> None:
    """Check that a batch size of 0 is refused."""
    with pytest.raises(ConfigError, match="batch size must be at least 1, got 0"):
        epoch_slices(5, 0, training=False)


def test_tensor_split_take_picks_the_rows_asked_for() -> None:
    """Check that take() returns the rows at the given indices, in their order, in every tensor."""
    batch = make_split(10).take(torch.tensor([7, 2]))
    assert batch.groups.tolist() == [7, 2]
    assert batch.categorical.tolist() == [[3, 1], [2, 2]]
    assert batch.numerical[:, 0].tolist() == pytest.approx([0.7, 0.2])
    assert batch.labels.tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_tensor_split_from_arrays_without_labels_gives_nan() -> None:
    """Check that a split made from columns lacking the labels gets NaN labels of shape [R, T]."""
    split = TensorSplit.from_arrays(
        {
            "search_id": [1, 2],
            "categorical_1": [0, 1],
            "categorical_2": [2, 2],
            "numerical_1": [0.5, 1],
        },
        SCHEMA,
    )
    assert split.labels.shape == (2, 2)
    assert torch.isnan(split.labels).all()


def write_dataset(root: Path, rows: int = 6) -> Path:
    """A prepared dataset with domains A and B, each holding train.parquet of `rows` rows."""
    SCHEMA.save(root)
    index = np.arange(rows)
    table = pa.table(
        {
            "search_id": pa.array(index // 2, pa.int64()),
            "categorical_1": pa.array(index % 4, pa.int32()),
            "categorical_2": pa.array(index % 3, pa.int32()),
            "numerical_1": pa.array(index / 4.0, pa.float32()),
            "click": pa.array(index % 2, pa.int8()),
            "conversion": pa.array(index % 4 == 1, pa.int8()),
        }
    )
    for domain in SCHEMA.domains:
        (root / domain).mkdir()
        pq.write_table(table, root / domain / "train.parquet")
    return root


@pytest.mark.filterwarnings("error::UserWarning")
def test_load_split_gives_tensors_of_the_documented_types(tmp_path: Path) -> None:
    """Check that load_split returns int64 [R, F], float32 [R, N] and [R, T], int64 [R] tensors."""
    split = load_split(write_dataset(tmp_path), "B", "train")
    assert (split.categorical.dtype, split.categorical.shape) == (torch.int64, (6, 2))
    assert (split.numerical.dtype, split.numerical.shape) == (torch.float32, (6, 1))
    assert (split.labels.dtype, split.labels.shape) == (torch.float32, (6, 2))
    assert split.groups.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.labels[:, 1].tolist() == [0, 1, 0, 0, 0, 1]


def test_load_split_rejects_an_unknown_domain(tmp_path: Path) -> None:
    """Check that a domain outside the schema is refused with the list of domains."""
    with pytest.raises(
        DataError, match=r"domain 'C' is not in this dataset; choose one of \['A', 'B'\]"
    ):
        load_split(write_dataset(tmp_path), "C", "train")


def test_load_split_names_the_missing_split_and_the_fix(tmp_path: Path) -> None:
    """Check that a missing sample split is reported with the available splits and `taa sample`."""
    with pytest.raises(DataError, match=r"available: \['train'\] \(run `taa sample`"):
        load_split(write_dataset(tmp_path), "B", "samples/f0.01-s0/train")

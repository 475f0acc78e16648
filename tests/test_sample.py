"""Tests of taa.data.sample and `taa sample`: stratified target samples and their validation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taa.cli.main import main
from taa.data.batches import load_split
from taa.data.sample import draw_sample, load_sample, sample_count, valid_count
from taa.data.schema import CategoricalField, NumericalField, Schema
from taa.errors import ConfigError, DataError

SCHEMA = Schema(
    categorical=(CategoricalField("categorical_1", 5),),
    numerical=(NumericalField("numerical_1"),),
    tasks=("click", "conversion"),
    domains=("A", "B"),
)
# rows per label stratum (click, conversion) in domain B's train split
STRATA = {(0, 0): 250, (1, 0): 30, (1, 1): 3}


def write_dataset(root: Path, strata: dict[tuple[int, int], int] = STRATA) -> Path:
    """A prepared dataset whose B/train.parquet holds `strata` rows, labels interleaved.

    `search_id` is a unique row id (row number * 10 + 7), so a sample's rows can be traced.
    The test split is not Parquet at all: reading it would fail.
    """
    labels = np.array(
        [stratum for stratum, size in strata.items() for _ in range(size)], dtype=np.int64
    ).reshape(-1, 2)
    labels = labels[np.random.default_rng(7).permutation(len(labels))]
    rows = len(labels)
    table = pa.table(
        {
            "search_id": pa.array(np.arange(rows) * 10 + 7, pa.int64()),
            "categorical_1": pa.array(np.arange(rows) % 5, pa.int32()),
            "numerical_1": pa.array(np.arange(rows) / rows, pa.float32()),
            "click": pa.array(labels[:, 0], pa.int8()),
            "conversion": pa.array(labels[:, 1], pa.int8()),
        }
    )
    SCHEMA.save(root)
    for domain in SCHEMA.domains:
        (root / domain).mkdir()
        pq.write_table(table, root / domain / "train.parquet")
        (root / domain / "test.parquet").write_bytes(b"not parquet: the sample must not read me")
    return root


def read_part(info_directory: Path, part: str) -> pa.Table:
    return pq.read_table(info_directory / f"{part}.parquet")


def ids(table: pa.Table) -> set[int]:
    return set(table.column("search_id").to_pylist())


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "dataset")


def test_per_stratum_counts_match_those_worked_by_hand(dataset: Path) -> None:
    """Check the counts of fraction 0.1, valid 0.2 on strata of 250, 30 and 3 rows.

    (0,0): round(25.0) = 25 drawn, round(5.0) = 5 valid, 20 train.
    (1,0): round(3.0) = 3 drawn, round(0.6) = 1 valid, 2 train.
    (1,1): round(0.3) = 0, raised to 1 drawn; 1 row cannot be split: 0 valid, 1 train.
    """
    info = draw_sample(dataset, "B", fraction=0.1, seed=0)
    counts = {item.labels: (item.population, item.train, item.valid) for item in info.strata}
    assert counts == {(0, 0): (250, 20, 5), (1, 0): (30, 2, 1), (1, 1): (3, 1, 0)}
    train, valid = read_part(info.directory, "train"), read_part(info.directory, "valid")
    for table, expected in (
        (train, {(0, 0): 20, (1, 0): 2, (1, 1): 1}),
        (valid, {(0, 0): 5, (1, 0): 1}),
    ):
        pairs = zip(
            table.column("click").to_pylist(), table.column("conversion").to_pylist(), strict=True
        )
        found: dict[tuple[int, int], int] = {}
        for pair in pairs:
            found[pair] = found.get(pair, 0) + 1
        assert found == expected


def test_sample_count_rounds_halves_up() -> None:
    """Check that 0.5 x 5 = 2.5 rows gives 3 and 0.25 x 10 = 2.5 gives 3 (not banker's 2)."""
    assert sample_count(5, 0.5) == 3
    assert sample_count(10, 0.25) == 3


def test_sample_count_keeps_at_least_one_row_of_a_non_empty_stratum() -> None:
    """Check that a stratum of 3 rows at fraction 0.01 still gives 1 row, and 0 rows give 0."""
    assert sample_count(3, 0.01) == 1
    assert sample_count(0, 0.01) == 0


def test_valid_count_leaves_a_train_row_and_takes_one_when_it_can() -> None:
    """Check the validation rule: 1 row of 2, 1 of 3 (0.6 rounds to 1), 2 of 10, none of 1."""
    assert [valid_count(k, 0.2) for k in (1, 2, 3, 10)] == [0, 1, 1, 2]
    assert valid_count(2, 0.9) == 1  # 1.8 rounds to 2 but one row must stay for training


def test_same_seed_gives_the_same_rows(dataset: Path, tmp_path: Path) -> None:
    """Check that drawing twice with seed 3 (on two copies of the data) gives the same rows."""
    other = write_dataset(tmp_path / "copy")
    first = draw_sample(dataset, "B", fraction=0.1, seed=3)
    second = draw_sample(other, "B", fraction=0.1, seed=3)
    for part in ("train", "valid"):
        assert ids(read_part(first.directory, part)) == ids(read_part(second.directory, part))
    assert first.indices_digest == second.indices_digest


def test_another_seed_gives_other_rows(dataset: Path) -> None:
    """Check that seeds 3 and 4 draw different train rows (same counts)."""
    first = draw_sample(dataset, "B", fraction=0.1, seed=3)
    second = draw_sample(dataset, "B", fraction=0.1, seed=4)
    assert first.strata == second.strata
    assert ids(read_part(first.directory, "train")) != ids(read_part(second.directory, "train"))
    assert first.indices_digest != second.indices_digest


def test_validation_is_disjoint_from_train_and_their_union_is_the_sample(dataset: Path) -> None:
    """Check that train and valid share no row and together hold exactly the drawn rows."""
    info = draw_sample(dataset, "B", fraction=0.1, seed=1)
    train, valid = read_part(info.directory, "train"), read_part(info.directory, "valid")
    population = pq.read_table(dataset / "B" / "train.parquet")
    assert ids(train).isdisjoint(ids(valid))
    union = ids(train) | ids(valid)
    assert len(union) == train.num_rows + valid.num_rows == 20 + 2 + 1 + 5 + 1
    assert union <= ids(population)


def test_sampled_rows_are_exact_copies_of_the_train_rows(dataset: Path) -> None:
    """Check that every column of each sampled row equals that row in the train split."""
    info = draw_sample(dataset, "B", fraction=0.1, seed=1)
    population = pq.read_table(dataset / "B" / "train.parquet").to_pylist()
    by_id = {row["search_id"]: row for row in population}
    for part in ("train", "valid"):
        table = read_part(info.directory, part)
        assert table.schema == pq.read_schema(dataset / "B" / "train.parquet")
        for row in table.to_pylist():
            assert row == by_id[row["search_id"]]


def test_sample_rows_keep_the_train_split_order(dataset: Path) -> None:
    """Check that sampled rows come in the order they have in the train split."""
    info = draw_sample(dataset, "B", fraction=0.2, seed=2)
    for part in ("train", "valid"):
        search_ids = read_part(info.directory, part).column("search_id").to_pylist()
        assert search_ids == sorted(search_ids)


def test_a_larger_fraction_holds_a_smaller_ones_sample(dataset: Path) -> None:
    """Check that for one seed the rows drawn at fraction 0.1 are among those drawn at 0.2."""
    small = draw_sample(dataset, "B", fraction=0.1, seed=5)
    large = draw_sample(dataset, "B", fraction=0.2, seed=5)
    small_rows = ids(read_part(small.directory, "train")) | ids(read_part(small.directory, "valid"))
    large_rows = ids(read_part(large.directory, "train")) | ids(read_part(large.directory, "valid"))
    assert small_rows < large_rows


def test_the_test_split_is_never_read(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that drawing a sample opens B/train.parquet only (B/test.parquet is not Parquet)."""
    opened: list[str] = []
    read_table = pq.read_table

    def recording_read_table(source: object, *args: object, **kwargs: object) -> pa.Table:
        opened.append(Path(str(source)).name)
        return read_table(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", recording_read_table)
    draw_sample(dataset, "B", fraction=0.1)
    assert opened == ["train.parquet"]


def test_default_name_and_load_split(dataset: Path) -> None:
    """Check that the default name is f0.01-s0 and load_split reads its train and valid parts."""
    info = draw_sample(dataset, "B")
    assert info.name == "f0.01-s0"
    assert info.directory == dataset / "B" / "samples" / "f0.01-s0"
    train = load_split(dataset, "B", "samples/f0.01-s0/train")
    valid = load_split(dataset, "B", info.valid_split)
    # fraction 0.01: 250 -> 3 (1 valid), 30 -> round(0.3) = 0 -> 1, 3 -> 1
    assert (len(train), len(valid)) == (2 + 1 + 1, 1)
    assert train.labels.sum(dim=0).tolist() == [2.0, 1.0]


def test_sample_json_records_the_draw(dataset: Path) -> None:
    """Check that sample.json holds the settings, source rows, strata and the indices digest."""
    info = draw_sample(dataset, "B", fraction=0.1, seed=0, valid_fraction=0.2, name="small")
    record = json.loads((dataset / "B" / "samples" / "small" / "sample.json").read_text())
    assert (record["fraction"], record["seed"], record["valid_fraction"]) == (0.1, 0, 0.2)
    assert record["source_rows"] == 283
    assert (record["train_rows"], record["valid_rows"]) == (23, 6)
    assert record["strata"][2] == {
        "labels": {"click": 1, "conversion": 1},
        "population": 3,
        "train": 1,
        "valid": 0,
    }
    assert record["indices_digest"] == info.indices_digest
    assert load_sample(dataset, "B", "small") == info


def test_fraction_one_samples_every_row(dataset: Path) -> None:
    """Check that fraction 1 draws the whole train split, 20 % of each stratum held out."""
    info = draw_sample(dataset, "B", fraction=1.0, seed=0)
    counts = {item.labels: (item.train, item.valid) for item in info.strata}
    assert counts == {(0, 0): (200, 50), (1, 0): (24, 6), (1, 1): (2, 1)}


def test_redrawing_a_name_with_other_settings_warns(
    dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that replacing a sample drawn with other settings says so in a warning."""
    draw_sample(dataset, "B", fraction=0.1, seed=0, name="mine")
    with caplog.at_level(logging.WARNING, logger="taa.data.sample"):
        draw_sample(dataset, "B", fraction=0.2, seed=0, name="mine")
    assert "replacing sample mine of B (fraction 0.1, seed 0, valid 0.2)" in caplog.text
    assert load_sample(dataset, "B", "mine").fraction == 0.2


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_zero_one_is_refused(dataset: Path, fraction: float) -> None:
    """Check that a fraction outside (0, 1] is refused, naming the value."""
    with pytest.raises(
        ConfigError, match=rf"option --fraction must be in \(0, 1\], got {fraction}"
    ):
        draw_sample(dataset, "B", fraction=fraction)


@pytest.mark.parametrize("valid_fraction", [0.0, 1.0])
def test_valid_fraction_outside_zero_one_is_refused(dataset: Path, valid_fraction: float) -> None:
    """Check that a validation fraction of 0 or 1 is refused, naming the value."""
    with pytest.raises(
        ConfigError,
        match=rf"option --valid-fraction must be strictly between 0 and 1, got {valid_fraction}",
    ):
        draw_sample(dataset, "B", valid_fraction=valid_fraction)


def test_negative_seed_is_refused(dataset: Path) -> None:
    """Check that a negative seed is a ConfigError on --seed, not a NumPy error."""
    with pytest.raises(ConfigError, match=r"option --seed must be an integer >= 0, got -5"):
        draw_sample(dataset, "B", seed=-5)


def test_negative_seed_on_the_command_line(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that ``taa sample --seed -5`` prints one error line naming --seed and exits 2."""
    from taa.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["sample", str(dataset), "--domain", "B", "--seed", "-5"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: option --seed must be an integer >= 0, got -5; e.g. --seed 0\n"
    )


def test_a_name_with_a_slash_is_refused(dataset: Path) -> None:
    """Check that a sample name that would leave the samples folder is refused."""
    with pytest.raises(ConfigError, match=r"option --name '\.\./x' is not a sample name"):
        draw_sample(dataset, "B", name="../x")


def test_unknown_domain_is_refused(dataset: Path) -> None:
    """Check that a domain outside the dataset is refused with the list of domains."""
    with pytest.raises(
        DataError, match=r"domain 'C' is not in this dataset; choose one of \['A', 'B'\]"
    ):
        draw_sample(dataset, "C")


def test_empty_train_split_is_refused(tmp_path: Path) -> None:
    """Check that a train split with no rows is refused, naming the file."""
    dataset = write_dataset(tmp_path, strata={(0, 0): 0})
    with pytest.raises(
        DataError, match=r"B/train\.parquet: the train split of domain 'B' has no rows"
    ):
        draw_sample(dataset, "B")


def test_a_sample_too_small_to_split_names_the_fraction_to_use(tmp_path: Path) -> None:
    """Check that 1 row per stratum (no validation row possible) asks for fraction >= 2.5/250."""
    dataset = write_dataset(tmp_path, strata={(0, 0): 250, (1, 0): 30})
    with pytest.raises(DataError, match=r"raise --fraction to at least 0\.01$"):
        draw_sample(dataset, "B", fraction=0.001)


def test_a_train_split_of_two_rows_is_too_small(tmp_path: Path) -> None:
    """Check that 2 train rows (1 train + 1 valid at best) are refused, asking for more rows."""
    dataset = write_dataset(tmp_path, strata={(0, 0): 2})
    with pytest.raises(
        DataError, match=r"draws 1 train and 1 validation rows from 2; .*more than 2 rows"
    ):
        draw_sample(dataset, "B", fraction=1.0)


def test_labels_other_than_zero_one_are_refused(tmp_path: Path) -> None:
    """Check that a label of 2 is refused with the column and its 1-based row."""
    dataset = write_dataset(tmp_path)
    table = pq.read_table(dataset / "B" / "train.parquet")
    clicks = table.column("click").to_numpy().copy()
    clicks[4] = 2
    table = table.set_column(3, "click", pa.array(clicks, pa.int8()))
    pq.write_table(table, dataset / "B" / "train.parquet")
    with pytest.raises(DataError, match=r"column 'click' row 5 holds 2; labels must be 0 or 1"):
        draw_sample(dataset, "B")


def test_cli_writes_the_sample_and_prints_its_strata(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that `taa sample` draws the sample and prints per-stratum counts."""
    main(["sample", str(dataset), "--domain", "B", "--fraction", "0.1", "--seed", "0"])
    output = capsys.readouterr().out
    assert "sample f0.1-s0 of B: 23 train + 6 valid rows of 283" in output
    assert "click=1, conversion=0: 2 train + 1 valid of 30" in output
    assert (dataset / "B" / "samples" / "f0.1-s0" / "valid.parquet").is_file()


def test_cli_reports_a_bad_fraction_and_exits_2(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that `taa sample --fraction 2` prints the error and exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(dataset), "--domain", "B", "--fraction", "2"])
    assert exit_info.value.code == 2
    assert "fraction must be in (0, 1], got 2.0" in capsys.readouterr().err

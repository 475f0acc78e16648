"""Tests of ``prepare_dataset``: the real rows, the encoding, repairs and atomic output."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from taa.data.batches import load_split
from taa.data.prepare import PrepareConfig, prepare_dataset
from taa.data.schema import Schema
from taa.data.vocabulary import Vocabulary
from taa.errors import ConfigError, DataError, DataRepairWarning

DOMAINS = ("A", "B", "NL")


def _prepare(out: Path, domains: dict[str, Path], **options: object) -> Schema:
    entries = tuple(f"{name}={path}" for name, path in domains.items())
    return prepare_dataset(PrepareConfig(out=out, domains=entries, quiet=True, **options))


def _csv(path: Path) -> dict[str, np.ndarray]:
    table = pacsv.read_csv(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


@pytest.fixture(scope="module")
def real_dataset(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A, B and NL prepared together once for this module."""
    out = tmp_path_factory.mktemp("real") / "dataset"
    _prepare(out, {name: real_data / name for name in DOMAINS})
    return out


@pytest.fixture(scope="module")
def raw_real(real_data: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """The real CSVs read by pyarrow, as a second method to check against."""
    return {
        (name, split): _csv(real_data / name / f"{split}.csv")
        for name in DOMAINS
        for split in ("train", "test")
    }


def test_dataset_files_and_dtypes(real_dataset: Path) -> None:
    """Check the folder layout and the Parquet columns' order and types."""
    schema = Schema.load(real_dataset)
    assert schema.domains == DOMAINS
    table = pq.read_table(real_dataset / "A" / "train.parquet")
    expected = [schema.group_key, *schema.feature_columns, *schema.tasks]
    assert table.column_names == expected
    types = {str(table.schema.field(name).type) for name in schema.categorical_names}
    assert types == {"int32"}
    assert {str(table.schema.field(name).type) for name in schema.numerical_names} == {"float"}
    assert str(table.schema.field("search_id").type) == "int64"
    assert {str(table.schema.field(task).type) for task in schema.tasks} == {"int8"}
    for name in DOMAINS:
        assert (real_dataset / name / "test.parquet").is_file()


def test_vocabulary_digest_is_the_file_hash(real_dataset: Path) -> None:
    """Check that the schema stores the SHA-256 of vocabulary.json's bytes."""
    text = (real_dataset / "vocabulary.json").read_bytes()
    assert Schema.load(real_dataset).vocabulary_digest == hashlib.sha256(text).hexdigest()


def test_vocabulary_holds_train_values_only(real_dataset: Path, raw_real: dict) -> None:
    """Check each field's vocabulary against the union of its train values (pyarrow)."""
    vocabulary = Vocabulary.load(real_dataset)
    schema = Schema.load(real_dataset)
    for item in schema.categorical:
        train = set()
        for name in DOMAINS:
            train |= {str(value) for value in raw_real[name, "train"][item.name]}
        assert set(vocabulary.values[item.name]) == train
        assert item.vocab_size == len(train) + 1


def test_out_of_vocabulary_counts(real_dataset: Path, raw_real: dict) -> None:
    """Check OOV counts per field: test values unseen in every train split, counted by hand."""
    extra = Schema.load(real_dataset).extra
    for field in ("categorical_3", "categorical_7", "categorical_9"):
        train = set()
        for name in DOMAINS:
            train |= set(raw_real[name, "train"][field].tolist())
        unseen = sum(value not in train for value in raw_real["A", "test"][field].tolist())
        assert extra["oov_counts"]["A"]["test"][field] == unseen
    assert extra["oov_counts"]["A"]["test"]["categorical_3"] == 68
    assert all(count == 0 for count in extra["oov_counts"]["A"]["train"].values())


def test_unseen_value_encoded_as_zero(real_dataset: Path, raw_real: dict) -> None:
    """Check that a test value unseen in training is index 0, and known ones decode back."""
    vocabulary = Vocabulary.load(real_dataset)
    encoded = pq.read_table(real_dataset / "A" / "test.parquet").column("categorical_3").to_numpy()
    raw = raw_real["A", "test"]["categorical_3"]
    known = {int(value) for value in vocabulary.values["categorical_3"]}
    for code, value in zip(encoded.tolist(), raw.tolist(), strict=True):
        if value in known:
            assert vocabulary.values["categorical_3"][code - 1] == str(value)
        else:
            assert code == 0


def test_duplicates_logged(processed_folder, caplog, tmp_path: Path) -> None:
    """Check that repeated rows are kept and their number logged."""
    row = processed_folder.row
    train = [row(1, 1, 0.5), row(1, 1, 0.5), row(1, 1, 0.5), row(2, 1, 0.5)]
    folder = processed_folder.write(tmp_path / "in", train, [row(3, 1, 0.5)])
    with caplog.at_level(logging.INFO, logger="taa.data.prepare"):
        schema = _prepare(tmp_path / "out", {"X": folder})
    assert schema.extra["rows"]["X"]["train"] == 4
    assert schema.extra["duplicate_rows"]["X"]["train"] == 2
    assert "X/train: 2 rows repeat an earlier row exactly (kept)" in caplog.text


def test_counts_match_the_readme(real_dataset: Path) -> None:
    """Check rows, positives and duplicate rows recorded in the schema."""
    extra = Schema.load(real_dataset).extra
    assert extra["rows"]["A"] == {"train": 1000, "test": 1000}
    assert extra["positives"]["A"]["test"] == {"click": 43, "conversion": 10}
    assert extra["positives"]["B"]["train"] == {"click": 60, "conversion": 2}
    assert extra["rows"]["NL"] == {"train": 2, "test": 2}
    assert extra["duplicate_rows"]["A"]["train"] == 4


def test_numerical_statistics_from_train_splits(real_dataset: Path, raw_real: dict) -> None:
    """Check mean, std, min and max against NumPy over the three train files (float32)."""
    schema = Schema.load(real_dataset)
    for item in schema.numerical[:5] + schema.numerical[-3:]:
        values = np.concatenate(
            [raw_real[name, "train"][item.name].astype(np.float32) for name in DOMAINS]
        ).astype(np.float64)
        assert item.mean == pytest.approx(values.mean(), abs=1e-9)
        assert item.std == pytest.approx(values.std(), abs=1e-9)
        assert (item.minimum, item.maximum) == (values.min(), values.max())


def test_prepared_split_loads_into_tensors(real_dataset: Path) -> None:
    """Check that the training loader reads a prepared split with the schema's shapes."""
    split = load_split(real_dataset, "B", "test")
    assert tuple(split.categorical.shape) == (20, 16)
    assert tuple(split.numerical.shape) == (20, 63)
    assert float(split.labels[:, 0].sum()) == 10


def test_imputation_uses_the_training_mean(processed_folder, tmp_path: Path) -> None:
    """Check that NaN values become the train mean (1, 3 -> 2) in train and test alike."""
    row = processed_folder.row
    train = [row(1, 1, 1.0), row(1, 1, 3.0), row(2, 1, float("nan"))]
    test = [row(3, 1, float("nan")), row(3, 1, 5.0)]
    folder = processed_folder.write(tmp_path / "in", train, test)
    with pytest.warns(DataRepairWarning, match=r"replaced by the training mean"):
        schema = _prepare(tmp_path / "out", {"X": folder}, nan="impute")
    assert schema.numerical[0].mean == 2.0
    values = pq.read_table(tmp_path / "out" / "X" / "train.parquet").column("numerical_1")
    assert values.to_pylist() == [1.0, 3.0, 2.0]
    values = pq.read_table(tmp_path / "out" / "X" / "test.parquet").column("numerical_1")
    assert values.to_pylist() == [2.0, 5.0]
    assert schema.extra["imputed_values"]["X"]["test"]["numerical_1"] == 1


@pytest.mark.parametrize(("option", "clicks"), [("repair", [1, 1, 0]), ("keep", [0, 1, 0])])
def test_conversion_without_click(
    processed_folder, tmp_path: Path, option: str, clicks: list
) -> None:
    """Check that ``repair`` sets click=1 on a conversion without a click and ``keep`` does not."""
    row = processed_folder.row
    train = [row(1, 1, 0.5, 0, 1), row(1, 2, 0.5, 1, 1), row(2, 1, 0.5, 0, 0)]
    folder = processed_folder.write(tmp_path / "in", train, train[1:])
    if option == "repair":
        with pytest.warns(DataRepairWarning, match=r"click set to 1 on 1 rows"):
            schema = _prepare(tmp_path / "out", {"X": folder}, conversion_without_click=option)
    else:
        schema = _prepare(tmp_path / "out", {"X": folder}, conversion_without_click=option)
    table = pq.read_table(tmp_path / "out" / "X" / "train.parquet")
    assert table.column("click").to_pylist() == clicks
    assert table.column("conversion").to_pylist() == [1, 1, 0]
    assert schema.extra["label_repairs"]["X"]["train"] == (
        {"click": 1} if option == "repair" else {}
    )


def test_out_of_vocabulary_logged(processed_folder, caplog, tmp_path: Path) -> None:
    """Check that OOV values are logged per field and per domain/split."""
    row = processed_folder.row
    folder = processed_folder.write(
        tmp_path / "in", [row(1, 1, 0.5), row(2, 2, 0.5)], [row(3, 7, 0.5), row(3, 1, 0.5)]
    )
    with caplog.at_level(logging.INFO, logger="taa.data.prepare"):
        schema = _prepare(tmp_path / "out", {"X": folder})
    assert schema.extra["oov_counts"]["X"]["test"]["categorical_16"] == 1
    assert "X/test: out-of-vocabulary values per field: categorical_1 1," in caplog.text


def test_failure_leaves_no_dataset(processed_folder, tmp_path: Path) -> None:
    """Check that an error in the last domain leaves no output folder and no scratch files."""
    row = processed_folder.row
    good = processed_folder.write(tmp_path / "in" / "good", [row(1, 1, 0.5)], [row(2, 1, 0.5)])
    bad_test = [row(2, 1, 0.5, click=3)]
    bad = processed_folder.write(tmp_path / "in" / "bad", [row(1, 1, 0.5)], bad_test)
    out = tmp_path / "work" / "dataset"
    with pytest.raises(DataError, match=r"bad/test.csv: data row 1, column 'click': label 3"):
        _prepare(out, {"G": good, "B": bad})
    assert not out.exists()
    assert list((tmp_path / "work").iterdir()) == []


def test_existing_output_needs_overwrite(processed_folder, tmp_path: Path) -> None:
    """Check that an existing dataset is kept unless overwrite is given, then replaced."""
    row = processed_folder.row
    folder = processed_folder.write(tmp_path / "in", [row(1, 1, 0.5)], [row(2, 1, 0.5)])
    out = tmp_path / "out"
    _prepare(out, {"X": folder})
    with pytest.raises(ConfigError, match=r"already exists; pass --overwrite"):
        _prepare(out, {"Y": folder})
    schema = _prepare(out, {"Y": folder}, overwrite=True)
    assert schema.domains == ("Y",)
    assert sorted(item.name for item in out.iterdir()) == ["Y", "schema.json", "vocabulary.json"]


def test_overwrite_refuses_a_folder_that_is_no_dataset(processed_folder, tmp_path: Path) -> None:
    """Check that --overwrite never replaces a non-empty folder without schema.json."""
    row = processed_folder.row
    folder = processed_folder.write(tmp_path / "in", [row(1, 1, 0.5)], [row(2, 1, 0.5)])
    with pytest.raises(ConfigError, match=r"is not a prepared dataset \(no schema.json\)"):
        _prepare(tmp_path / "in", {"X": folder}, overwrite=True)


def test_domains_with_other_columns(processed_folder, tmp_path: Path) -> None:
    """Check that domains whose columns differ cannot share a dataset."""
    row = processed_folder.row
    folder = processed_folder.write(tmp_path / "in", [row(1, 1, 0.5)], [row(2, 1, 0.5)])
    (tmp_path / "t.csv").write_text("g,c,n,y\n1,a,0.5,1\n")
    (tmp_path / "t.yaml").write_text(
        "group_key: g\ncategorical: [c]\nnumerical: [n]\ntasks: [y]\ntrain: t.csv\ntest: t.csv\n"
    )
    with pytest.raises(
        DataError, match=r"domain 'T' \(tabular, .*t.yaml\) does not have the columns"
    ):
        _prepare(tmp_path / "out", {"X": folder, "T": tmp_path / "t.yaml"})


def test_raw_and_processed_domains_together(raw_country, processed_folder, tmp_path: Path) -> None:
    """Check that a raw Tianchi domain and a processed one share one schema and vocabulary."""
    parts = {
        "user_train": [raw_country.user(1)],
        "item_train": [raw_country.item(1, 1, 2)],
        "user_test": [raw_country.user(2)],
        "item_test": [raw_country.item(1, 2, 0)],
    }
    raw = raw_country.write(tmp_path / "raw", parts)
    row = processed_folder.row
    processed = processed_folder.write(tmp_path / "pr", [row(5, 102, 0.5)], [row(6, 1, 0.5)])
    schema = _prepare(tmp_path / "out", {"R": raw, "P": processed})
    assert schema.source_format == "mixed"
    vocabulary = Vocabulary.load(tmp_path / "out")
    assert vocabulary.values["categorical_1"] == ("102",)  # raw page 1 column 2, and P's code
    test = pq.read_table(tmp_path / "out" / "R" / "test.parquet").to_pydict()
    assert test["categorical_1"] == [0]  # page 2 gives 202, unseen in training
    assert (test["click"], test["conversion"]) == ([0], [0])


def test_domain_name_from_path() -> None:
    """Check that a bare path names its domain after the country code."""
    config = PrepareConfig(
        out=Path("o"), domains=("data/AliExpress_NL", "x/aliexpress_ES_datasets.zip")
    )
    assert config.domain_paths() == {
        "NL": Path("data/AliExpress_NL"),
        "ES": Path("x/aliexpress_ES_datasets.zip"),
    }


@pytest.mark.parametrize(
    ("domains", "message"),
    [
        (("A=x", "A=y"), r"names 'A' twice"),
        (("bad name=x",), r"the name 'bad name' must be letters"),
        (("samples=x",), r"the name 'samples' is reserved .*choose another name"),
        (("ES=x", "es=y"), r"names 'ES' and 'es', which differ only by case"),
    ],
)
def test_domain_option_errors(domains: tuple[str, ...], message: str) -> None:
    """Check the messages of malformed --domain options."""
    with pytest.raises(ConfigError, match=message):
        PrepareConfig(out=Path("o"), domains=domains)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nan": "zero"}, r"option --nan got 'zero'; choose one of \['fail', 'impute'\]"),
        ({"layout": "csv"}, r"option --layout got 'csv'"),
        ({"threads": -1}, r"option --threads must be >= 0"),
        ({"orphan_items": "keep"}, r"option --orphan-items got 'keep'"),
    ],
)
def test_option_errors(options: dict, message: str) -> None:
    """Check the messages of out-of-range options."""
    with pytest.raises(ConfigError, match=message):
        PrepareConfig(out=Path("o"), domains=("A=x",), **options)


def test_memory_limit_refused(real_data: Path, tmp_path: Path) -> None:
    """Check that a memory limit DuckDB cannot parse names the option and leaves nothing."""
    with pytest.raises(ConfigError, match=r"option --memory-limit 'lots' / --threads 0: DuckDB"):
        _prepare(tmp_path / "out", {"NL": real_data / "NL"}, memory_limit="lots")
    assert list(tmp_path.iterdir()) == []


def test_no_domain() -> None:
    """Check that preparing nothing is refused."""
    with pytest.raises(ConfigError, match=r"no domain given"):
        prepare_dataset(PrepareConfig(out=Path("o")))


def test_schema_json_lists_options(real_dataset: Path) -> None:
    """Check that the options used are recorded in the schema's extra."""
    data = json.loads((real_dataset / "schema.json").read_text())
    assert data["extra"]["options"] == {
        "nan": "fail",
        "conversion_without_click": "fail",
        "orphan_items": "drop",
    }


def test_raw_and_processed_simulations_agree(tmp_path: Path) -> None:
    """Check that the simulator's raw zips and its processed CSVs prepare to the same data.

    The two layouts go through different readers (join of page and item files versus one
    82-column table); equal vocabularies and equal values show the column mapping agrees.
    """
    from taa.data.simulate import SimulateConfig, simulate_countries

    simulated = tmp_path / "sim"
    simulate_countries(SimulateConfig(out=simulated, countries=("es",), rows=3000, layout="both"))
    raw = _prepare(tmp_path / "raw", {"ES": simulated / "raw" / "aliexpress_ES_datasets.zip"})
    processed = _prepare(tmp_path / "processed", {"ES": simulated / "processed" / "AliExpress_ES"})
    assert raw.vocabulary_digest == processed.vocabulary_digest
    assert raw.numerical == processed.numerical
    for split in ("train", "test"):
        tables = [
            pq.read_table(tmp_path / name / "ES" / f"{split}.parquet").to_pydict()
            for name in ("raw", "processed")
        ]
        assert tables[0] == tables[1]


def test_work_dir_holds_scratch_files_only_while_running(processed_folder, tmp_path: Path) -> None:
    """Check that --work-dir receives the scratch folder and is left empty afterwards."""
    row = processed_folder.row
    folder = processed_folder.write(tmp_path / "in", [row(1, 1, 0.5)], [row(2, 1, 0.5)])
    work = tmp_path / "scratch"
    _prepare(tmp_path / "out", {"X": folder}, work_dir=work, threads=1, compression="zstd")
    assert work.is_dir()
    assert list(work.iterdir()) == []
    metadata = pq.ParquetFile(tmp_path / "out" / "X" / "train.parquet").metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"

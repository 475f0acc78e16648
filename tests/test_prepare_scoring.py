"""Tests of ``load_for_scoring``: files in every layout encoded with a dataset's vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from taa.data.encode import load_for_scoring
from taa.data.prepare import PrepareConfig, prepare_dataset
from taa.errors import DataError, DataRepairWarning, SchemaMismatchError


@pytest.fixture(scope="module")
def dataset(raw_country, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset from one raw Tianchi country (pages 1 and 2, train; page 3, test)."""
    raw = raw_country
    root = tmp_path_factory.mktemp("scoring")
    parts = {
        "user_train": [raw.user(1), raw.user(2)],
        "item_train": [raw.item(1, 1, 0), raw.item(2, 2, 1), raw.item(3, 1, 2)],
        "user_test": [raw.user(3)],
        "item_test": [raw.item(1, 3, 1), raw.item(4, 3, 0)],
    }
    source = raw.write(root / "raw", parts)
    prepare_dataset(PrepareConfig(out=root / "data", domains=(f"NL={source}",), quiet=True))
    return root / "data"


def test_raw_download_scores_its_test_split(dataset: Path, tmp_path: Path, raw_country) -> None:
    """Check that a raw download gives its test rows, ids and the prepared test encoding."""
    parts = {
        "user_train": [raw_country.user(9)],
        "item_train": [raw_country.item(1, 9, 0)],
        "user_test": [raw_country.user(3)],
        "item_test": [raw_country.item(1, 3, 1), raw_country.item(4, 3, 0)],
    }
    source = raw_country.write(tmp_path / "raw", parts)
    scoring = load_for_scoring(source, dataset)
    prepared = pq.read_table(dataset / "NL" / "test.parquet").to_pydict()
    np.testing.assert_array_equal(scoring.ids["search_id"], [3, 3])
    np.testing.assert_array_equal(scoring.ids["row"], [1, 2])
    np.testing.assert_array_equal(
        scoring.split.categorical[:, 0].numpy(), prepared["categorical_1"]
    )
    np.testing.assert_array_equal(scoring.split.labels[:, 0].numpy(), [1.0, 0.0])


def test_flat_file_without_labels(dataset: Path, tmp_path: Path, raw_country) -> None:
    """Check a CSV with the dataset's columns, no labels and an extra column.

    Its first row repeats item 1 of page 1 (all categories known); the second has codes
    nobody saw in training (all 0) and a NaN (imputed with the training mean).
    """
    table = pq.read_table(dataset / "NL" / "train.parquet")
    names = [name for name in table.column_names if name not in ("click", "conversion")]
    first = [str(value) for value in _raw_train_row(raw_country)]
    second = ["7"] + ["999"] * 16 + ["nan"] + ["0.5"] * 62
    lines = [",".join([*names, "note"]), ",".join([*first, "x"]), ",".join([*second, "y"])]
    (tmp_path / "rows.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(DataRepairWarning, match=r"1 NaN, infinite or empty numerical values"):
        scoring = load_for_scoring(tmp_path / "rows.csv", dataset)
    assert bool(np.isnan(scoring.split.labels.numpy()).all())
    np.testing.assert_array_equal(scoring.split.categorical[1].numpy(), np.zeros(16))
    assert (scoring.split.categorical[0] > 0).all()
    mean = float(np.mean(table.column("numerical_1").to_numpy()))
    assert scoring.split.numerical[1, 0].item() == pytest.approx(mean, rel=1e-6)
    assert scoring.oov_counts["categorical_5"] == 1
    np.testing.assert_array_equal(scoring.ids["row"], [1, 2])


def test_flat_file_non_integer_code_refused(dataset: Path, tmp_path: Path, raw_country) -> None:
    """Check that a code of 1.5 in a CSV scored with a raw-prepared dataset is refused as
    ``taa prepare`` refuses it, not encoded as unseen."""
    table = pq.read_table(dataset / "NL" / "train.parquet")
    names = [name for name in table.column_names if name not in ("click", "conversion")]
    row = [str(value) for value in _raw_train_row(raw_country)]
    row[3] = "1.5"  # categorical_3
    (tmp_path / "rows.csv").write_text(",".join(names) + "\n" + ",".join(row) + "\n")
    with pytest.raises(
        DataError,
        match=r"rows.csv: line 2, column 'categorical_3': '1.5' is not an integer category code",
    ):
        load_for_scoring(tmp_path / "rows.csv", dataset)


def _raw_train_row(raw) -> list[object]:
    """Item 1 of page 1 in canonical columns (see conftest.RawCountry's values)."""
    user_numerical = list(range(9, 32))
    item_numerical = [column for column in range(2, 49) if column not in raw.item_categorical]
    return (
        [1]
        + [100 + column for column in raw.user_categorical]
        + [100 + column for column in raw.item_categorical]
        + [f"1.{column:02d}" for column in user_numerical]
        + [f"501.{column:03d}" for column in item_numerical]
    )


def test_layout_with_other_columns(dataset: Path, tmp_path: Path) -> None:
    """Check that a tabular source whose columns differ from the dataset's is refused."""
    (tmp_path / "t.csv").write_text("g,c,y\n1,a,1\n")
    (tmp_path / "t.yaml").write_text(
        "group_key: g\ncategorical: [c]\ntasks: [y]\ntrain: t.csv\ntest: t.csv\n"
    )
    with pytest.raises(SchemaMismatchError, match=r"t.yaml: its columns \(tabular layout"):
        load_for_scoring(tmp_path / "t.yaml", dataset)


def test_header_only_file_names_the_file(dataset: Path, tmp_path: Path) -> None:
    """Check that a CSV to score with a header and no rows is named as the file to score,
    not as a split of a domain."""
    table = pq.read_table(dataset / "NL" / "train.parquet")
    names = [name for name in table.column_names if name not in ("click", "conversion")]
    (tmp_path / "empty.csv").write_text(",".join(names) + "\n")
    with pytest.raises(
        DataError, match=r"empty.csv: no data rows; the file to score must hold at least one row"
    ):
        load_for_scoring(tmp_path / "empty.csv", dataset)


def test_raw_download_with_empty_item_file(dataset: Path, tmp_path: Path, raw_country) -> None:
    """Check that a raw download whose test item file is empty is refused without speaking
    of a header (raw files have none)."""
    parts = {
        "user_train": [raw_country.user(9)],
        "item_train": [raw_country.item(1, 9, 0)],
        "user_test": [raw_country.user(3)],
        "item_test": [],
    }
    source = raw_country.write(tmp_path / "raw", parts)
    with pytest.raises(
        DataError, match=r"item_test.csv: no data rows; .* \(the file has no header\)"
    ):
        load_for_scoring(source, dataset)

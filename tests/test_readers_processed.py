"""Tests of the processed-layout reader on the real rows and on small broken files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from taa.data.readers import open_reader
from taa.data.readers.common import Session, sql_name
from taa.data.readers.processed import PROCESSED_ROLES, ProcessedReader
from taa.data.validate import ValidationOptions
from taa.errors import DataError, DataRepairWarning

# (rows, clicks, conversions) per folder and split, as the data's README states.
REAL_COUNTS = {
    ("A", "train"): (1000, 29, 10),
    ("A", "test"): (1000, 43, 10),
    ("B", "train"): (100, 60, 2),
    ("B", "test"): (20, 10, 0),
    ("NL", "train"): (2, 0, 0),
    ("NL", "test"): (2, 0, 0),
}
REAL_MAXIMA = [9, 3, 5, 1, 20, 6, 49, 7, 6, 1, 1, 1, 1, 1, 1, 1]
HEADER = list(PROCESSED_ROLES.columns)


@pytest.fixture(scope="module")
def real_views(real_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """Every split of A, B and NL read by the processed reader, in one session."""
    with Session(tmp_path_factory.mktemp("scratch")) as session:
        views = {
            (name, split): ProcessedReader(real_data / name).load_split(
                session, name, split, ValidationOptions()
            )
            for name, split in REAL_COUNTS
        }
        yield session, views


@pytest.mark.parametrize(("name", "split"), list(REAL_COUNTS))
def test_real_rows_and_labels(real_views: tuple, name: str, split: str) -> None:
    """Check rows, clicks and conversions of each real split against the README's table."""
    session, views = real_views
    view = views[name, split]
    found = session.one(
        f"SELECT count(*), sum(click), sum(conversion) FROM ({view.relation})", "test"
    )
    assert (found[0], int(found[1]), int(found[2])) == REAL_COUNTS[name, split]
    assert view.rows == REAL_COUNTS[name, split][0]


def _maxima(real_views: tuple, splits: tuple[str, ...]) -> list[int]:
    session, views = real_views
    union = " UNION ALL ".join(
        f"SELECT * FROM ({view.relation})" for (_, split), view in views.items() if split in splits
    )
    maxima = session.one(
        f"SELECT {', '.join(f'max({sql_name(c)})' for c in PROCESSED_ROLES.categorical)} "
        f"FROM ({union})",
        "test",
    )
    return list(maxima)


def test_real_category_maxima_of_train_splits(real_views: tuple) -> None:
    """Check the largest raw code per field over the train splits: the README's list."""
    assert _maxima(real_views, ("train",)) == REAL_MAXIMA


def test_real_category_maxima_of_all_splits(real_views: tuple) -> None:
    """Check the maxima over train and test: A/test holds codes 6 and 7 in fields 3 and 9.

    The README calls its list the maxima "over all folders"; it holds for the train splits
    only (pandas' ``max`` over the six files gives this list).
    """
    expected = list(REAL_MAXIMA)
    expected[2], expected[8] = 6, 7
    assert _maxima(real_views, ("train", "test")) == expected


def test_real_row_numbers_follow_the_file(real_views: tuple) -> None:
    """Check that ``__row`` numbers the data rows 1..n in file order."""
    session, views = real_views
    rows = session.rows(f"SELECT __row FROM ({views['B', 'test'].relation})", "test")
    assert [row[0] for row in rows] == list(range(1, 21))


def _rows(count: int) -> list[list[str]]:
    """Valid processed rows: page i // 2, codes i % 3, numbers i / 10, click on odd rows."""
    rows = []
    for index in range(count):
        row = [str(index // 2)] + [str(index % 3)] * 16 + [f"{index / 10:.1f}"] * 63
        rows.append([*row, str(index % 2), "0"])
    return rows


def _write(folder: Path, header: list[str], rows: list[list[str]], split: str = "train") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(row) for row in rows]
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    if not (folder / "test.csv").exists() and split == "train":
        (folder / "test.csv").write_text("\n".join(lines[:2]) + "\n")
    return folder


def _load(folder: Path, tmp_path: Path, split: str = "train", **options: str):
    with Session(tmp_path / "scratch") as session:
        return ProcessedReader(folder).load_split(session, "X", split, ValidationOptions(**options))


def test_missing_column(tmp_path: Path) -> None:
    """Check that a missing column is named."""
    header = [name for name in HEADER if name != "numerical_5"]
    rows = [row[:21] + row[22:] for row in _rows(3)]
    folder = _write(tmp_path / "d", header, rows)
    with pytest.raises(DataError, match=r"train.csv: missing columns \['numerical_5'\]"):
        _load(folder, tmp_path)


def test_unexpected_column(tmp_path: Path) -> None:
    """Check that a column outside the layout is named."""
    folder = _write(tmp_path / "d", [*HEADER, "extra"], [[*row, "1"] for row in _rows(3)])
    with pytest.raises(DataError, match=r"unexpected columns \['extra'\]"):
        _load(folder, tmp_path)


def test_repeated_column_name(tmp_path: Path) -> None:
    """Check that a header naming a column twice is refused."""
    header = [*HEADER[:-1], "click"]
    folder = _write(tmp_path / "d", header, _rows(3))
    with pytest.raises(DataError, match=r"column names \['click'\] appear more than once"):
        _load(folder, tmp_path)


def test_non_numeric_value(tmp_path: Path) -> None:
    """Check file, line, column and value of a text in a numerical column."""
    rows = _rows(3)
    rows[1][18] = "abc"  # numerical_2 of data row 2 (line 3)
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(DataError, match=r"line 3, column 'numerical_2': 'abc' is not a number"):
        _load(folder, tmp_path)


def test_non_integer_category(tmp_path: Path) -> None:
    """Check that a categorical value that is not an integer code is named."""
    rows = _rows(3)
    rows[2][4] = "x1"  # categorical_4 of line 4
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(
        DataError, match=r"line 4, column 'categorical_4': 'x1' is not an integer category code"
    ):
        _load(folder, tmp_path)


def test_wrong_number_of_values(tmp_path: Path) -> None:
    """Check that a line with a value missing names the line and both counts."""
    rows = _rows(3)
    rows[0] = rows[0][:-1]
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(DataError, match=r"train.csv: line 2: expected 82 columns, got 81"):
        _load(folder, tmp_path)


@pytest.mark.parametrize(
    ("row", "value", "message"),
    [
        (0, "2", r"data row 1, column 'click': label 2 is not 0 or 1 \(1 such rows\)"),
        (2, "", r"data row 3, column 'click': the label is empty \(1 such rows\)"),
    ],
)
def test_bad_label_refused(tmp_path: Path, row: int, value: str, message: str) -> None:
    """Check that a click of 2, or an empty click, is refused with its row and the count of
    such rows (an empty one said to be empty)."""
    rows = _rows(4)
    rows[row][-2] = value
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(DataError, match=message):
        _load(folder, tmp_path)


def test_missing_group_key(tmp_path: Path) -> None:
    """Check that an empty search_id is refused."""
    rows = _rows(3)
    rows[2][0] = ""
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(DataError, match=r"data row 3, column 'search_id': the group key is empty"):
        _load(folder, tmp_path)


INFINITE = r"inf \(infinite, or beyond float32's range of \+-3\.4e38\)"


@pytest.mark.parametrize(
    ("text", "shown"),
    [("nan", "nan"), ("inf", INFINITE), ("1e39", INFINITE), ("", "an empty value")],
)
def test_non_finite_number_fails(tmp_path: Path, text: str, shown: str) -> None:
    """Check that NaN, infinity, a number beyond float32 and empty numerical values fail by
    default, with a hint."""
    rows = _rows(3)
    rows[1][19] = text  # numerical_3
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(
        DataError,
        match=rf"data row 2, column 'numerical_3': {shown} is not a finite number "
        r"\(1 NaN, infinite or empty values in this column\); pass --nan impute",
    ):
        _load(folder, tmp_path)


def test_non_finite_numbers_counted_when_imputed(tmp_path: Path) -> None:
    """Check that ``nan=impute`` counts the values per column and warns."""
    rows = _rows(4)
    rows[0][19] = "nan"
    rows[3][19] = "-inf"
    rows[2][79] = ""
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.warns(DataRepairWarning, match=r"3 NaN, infinite or empty numerical values"):
        view = _load(folder, tmp_path, nan="impute")
    assert view.nonfinite == {"numerical_3": 2, "numerical_63": 1}


def test_conversion_without_click_fails(tmp_path: Path) -> None:
    """Check that a conversion on a row without a click is refused with the repair hint."""
    rows = _rows(4)
    rows[2][-1] = "1"  # row 3 has click 0
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.raises(
        DataError,
        match=r"data row 3: conversion is 1 but 'click' is 0 \(1 such rows\).*"
        r"--conversion-without-click repair",
    ):
        _load(folder, tmp_path)


def test_conversion_without_click_counted_when_repaired(tmp_path: Path) -> None:
    """Check that the repair option counts the rows to fix and warns."""
    rows = _rows(6)
    rows[0][-1] = "1"
    rows[4][-1] = "1"
    rows[1][-1] = "1"  # row 2 has a click: not a violation
    folder = _write(tmp_path / "d", HEADER, rows)
    with pytest.warns(DataRepairWarning, match=r"click set to 1 on 2 rows"):
        view = _load(folder, tmp_path, conversion_without_click="repair")
    assert view.label_repairs == {"click": 2}


def test_empty_split(tmp_path: Path) -> None:
    """Check that a split with a header and no rows is refused."""
    folder = _write(tmp_path / "d", HEADER, [])
    with pytest.raises(DataError, match=r"no data rows; the train split of domain 'X'"):
        _load(folder, tmp_path)


def test_missing_split_file(tmp_path: Path) -> None:
    """Check that a folder without test.csv names the missing file."""
    folder = _write(tmp_path / "d", HEADER, _rows(2))
    (folder / "test.csv").unlink()
    with pytest.raises(DataError, match=r"no test.csv or test.parquet"):
        _load(folder, tmp_path, split="test")


def test_parquet_files_read_like_csv(tmp_path: Path) -> None:
    """Check that train.parquet gives the same rows as the same data in train.csv."""
    csv_folder = _write(tmp_path / "csv", HEADER, _rows(5))
    table = pacsv.read_csv(csv_folder / "train.csv")
    parquet_folder = tmp_path / "pq"
    parquet_folder.mkdir()
    pq.write_table(table, parquet_folder / "train.parquet")
    pq.write_table(table.slice(0, 1), parquet_folder / "test.parquet")
    with Session(tmp_path / "scratch") as session:
        options = ValidationOptions()
        views = [
            ProcessedReader(f).load_split(session, "X", "train", options)
            for f in (csv_folder, parquet_folder)
        ]
        rows = [session.rows(f"SELECT * FROM ({view.relation})", "test") for view in views]
    assert rows[0] == rows[1]


def test_parquet_column_of_wrong_type(tmp_path: Path) -> None:
    """Check that a Parquet numerical column holding text is refused by type."""
    folder = _write(tmp_path / "csv", HEADER, _rows(3))
    table = pacsv.read_csv(folder / "train.csv")
    position = table.schema.get_field_index("numerical_7")
    table = table.set_column(position, "numerical_7", pa.array(["a", "b", "c"]))
    (folder / "train.csv").unlink()
    pq.write_table(table, folder / "train.parquet")
    with pytest.raises(
        DataError, match=r"column 'numerical_7' has type string; numerical columns must be numeric"
    ):
        _load(folder, tmp_path)


def test_layout_detected(real_data: Path) -> None:
    """Check that a folder with train.csv and test.csv is read as the processed layout."""
    assert open_reader(real_data / "NL").layout == "processed"

"""Tests of the raw Tianchi reader: the join worked by hand, the accepted forms, the errors."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from taa.data.readers import detect_layout
from taa.data.readers.common import Session
from taa.data.readers.tianchi import TianchiReader
from taa.data.validate import ValidationOptions
from taa.errors import DataError


def _parts(raw) -> dict[str, list[list[str]]]:
    """Pages 10, 20, 30; items: (page 20, label 0), (10, 2), (99, 1), (10, 1); page 30 has no
    item and page 99 does not exist, so the train split has items 1, 2 and 4."""
    return {
        "user_train": [raw.user(10), raw.user(20), raw.user(30)],
        "item_train": [
            raw.item(1, 20, 0),
            raw.item(2, 10, 2),
            raw.item(3, 99, 1),
            raw.item(4, 10, 1),
        ],
        "user_test": [raw.user(40)],
        "item_test": [raw.item(1, 40, 1), raw.item(2, 40, 0)],
    }


def _read(path: Path, tmp_path: Path, split: str = "train", **options: str) -> dict[str, list]:
    """The split's canonical columns as lists, in output order."""
    with Session(tmp_path / "scratch") as session:
        view = TianchiReader(path).load_split(session, "NL", split, ValidationOptions(**options))
        columns = session.numpy(f"SELECT * FROM ({view.relation}) ORDER BY __row", "test")
    return {name: values.tolist() for name, values in columns.items()}


def test_join_worked_by_hand(raw_country, tmp_path: Path) -> None:
    """Check which rows, which columns and which labels the join gives, value by value.

    Items 1, 2 and 4 keep their order; item 3 (page 99) is dropped. Page columns come from
    the page's user row (value ``page*100 + c`` or ``page + c/100``), item columns from the
    item row ``r`` (``r*100 + c`` or ``500 + r + c/1000``).
    """
    path = raw_country.write(tmp_path / "raw", _parts(raw_country))
    columns = _read(path, tmp_path)
    pages, rows = [20, 10, 10], [1, 2, 4]
    assert columns["search_id"] == pages
    assert columns["__row"] == rows
    assert columns["click"] == [0, 1, 1]
    assert columns["conversion"] == [0, 1, 0]
    # categorical_1..7 <- user columns 2..8; categorical_8, 9 <- user columns 32, 33
    for field, column in [(1, 2), (7, 8), (8, 32), (9, 33)]:
        assert columns[f"categorical_{field}"] == [page * 100 + column for page in pages]
    # categorical_10..16 <- item columns 19, 34, 35, 36, 40, 41, 42
    for field, column in [(10, 19), (11, 34), (13, 36), (14, 40), (16, 42)]:
        assert columns[f"categorical_{field}"] == [row * 100 + column for row in rows]
    # numerical_1..23 <- user columns 9..31
    for field, column in [(1, 9), (23, 31)]:
        expected = np.float32([page + column / 100 for page in pages])
        np.testing.assert_array_equal(np.float32(columns[f"numerical_{field}"]), expected)
    # numerical_24..63 <- item columns 2..18, 20..33, 37..39, 43..48
    for field, column in [
        (24, 2),
        (40, 18),
        (41, 20),
        (54, 33),
        (55, 37),
        (57, 39),
        (58, 43),
        (63, 48),
    ]:
        expected = np.float32([500 + row + column / 1000 for row in rows])
        np.testing.assert_array_equal(np.float32(columns[f"numerical_{field}"]), expected)


@pytest.mark.parametrize("form", ["inner", "csv"])
def test_other_forms_give_the_same_rows(raw_country, tmp_path: Path, form: str) -> None:
    """Check that a folder of inner zips or of CSVs reads like the outer zip."""
    outer = raw_country.write(tmp_path / "outer", _parts(raw_country))
    other = raw_country.write(tmp_path / form, _parts(raw_country), form=form)
    assert _read(other, tmp_path / "b") == _read(outer, tmp_path / "a")


def test_folder_holding_the_outer_zip(raw_country, tmp_path: Path) -> None:
    """Check that a folder whose only archive is aliexpress_XX_datasets.zip is read."""
    outer = raw_country.write(tmp_path / "raw", _parts(raw_country))
    assert detect_layout(outer.parent) == "tianchi"
    assert _read(outer.parent, tmp_path)["search_id"] == [20, 10, 10]


def test_tolerant_member_names(raw_country, tmp_path: Path) -> None:
    """Check that inner members only need to end in user_train.csv and so on."""
    folder = raw_country.write(tmp_path / "raw", _parts(raw_country), form="inner")
    path = folder / "nl_user_train.zip"
    text = zipfile.ZipFile(path).read("nl_user_train.csv")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("export/NL_user_train.csv", text)
    assert _read(folder, tmp_path)["search_id"] == [20, 10, 10]


def test_test_split(raw_country, tmp_path: Path) -> None:
    """Check that the test split joins the test files."""
    path = raw_country.write(tmp_path / "raw", _parts(raw_country))
    columns = _read(path, tmp_path, split="test")
    assert columns["search_id"] == [40, 40]
    assert columns["click"] == [1, 0]


def test_truncated_outer_zip(raw_country, tmp_path: Path) -> None:
    """Check that a truncated download is refused, naming the file."""
    path = raw_country.write(tmp_path / "raw", _parts(raw_country))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        DataError, match=r"aliexpress_NL_datasets.zip: not a readable zip archive.*truncated"
    ):
        TianchiReader(path)


def test_corrupt_inner_member(raw_country, tmp_path: Path) -> None:
    """Check that a member whose bytes were damaged is refused, naming archive and member."""
    folder = raw_country.write(tmp_path / "raw", _parts(raw_country), form="inner")
    path = folder / "nl_item_train.zip"
    data = bytearray(path.read_bytes())
    data[60:70] = b"\x00" * 10  # inside the compressed CSV
    path.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"nl_item_train.zip:nl_item_train.csv: the archive is corrupt or truncated"
    ):
        _read(folder, tmp_path)


def test_missing_inner_file(raw_country, tmp_path: Path) -> None:
    """Check that a missing part is named with the expected file name."""
    parts = _parts(raw_country)
    del parts["item_test"]
    path = raw_country.write(tmp_path / "raw", parts)
    with pytest.raises(DataError, match=r"missing nl_item_test.zip \(or nl_item_test.csv\)"):
        _read(path, tmp_path, split="test")


def test_inner_zip_without_the_csv(raw_country, tmp_path: Path) -> None:
    """Check that an inner zip holding another file names what it holds."""
    folder = raw_country.write(tmp_path / "raw", _parts(raw_country), form="inner")
    with zipfile.ZipFile(folder / "nl_user_train.zip", "w") as archive:
        archive.writestr("readme.txt", "nothing")
    with pytest.raises(DataError, match=r"no member ending in user_train.csv.*readme.txt"):
        _read(folder, tmp_path)


def test_inner_zip_with_two_candidate_csvs(raw_country, tmp_path: Path) -> None:
    """Check that an inner zip holding two CSVs that end in the part's name is refused (the
    outer zip and folders refuse the same), naming both, rather than one read silently."""
    folder = raw_country.write(tmp_path / "raw", _parts(raw_country), form="inner")
    with zipfile.ZipFile(folder / "nl_user_train.zip") as archive:
        text = archive.read(archive.namelist()[0])
    with zipfile.ZipFile(folder / "nl_user_train.zip", "w") as archive:
        archive.writestr("a/nl_user_train.csv", text)
        archive.writestr("b/nl_user_train.csv", text)
    with pytest.raises(
        DataError,
        match=r"several members end in user_train.csv: \['a/nl_user_train.csv', "
        r"'b/nl_user_train.csv'\]",
    ):
        _read(folder, tmp_path)


def test_wrong_column_count(raw_country, tmp_path: Path) -> None:
    """Check file, line, expected and found column counts."""
    parts = _parts(raw_country)
    parts["user_train"][1] = [*parts["user_train"][1], "7"]
    path = raw_country.write(tmp_path / "raw", parts, form="csv")
    with pytest.raises(DataError, match=r"nl_user_train.csv: line 2: expected 33 columns, got 34"):
        _read(path, tmp_path)


def test_label_outside_zero_one_two(raw_country, tmp_path: Path) -> None:
    """Check that a raw label of 3 is refused, naming column 49."""
    parts = _parts(raw_country)
    parts["item_train"][3][-1] = "3"
    path = raw_country.write(tmp_path / "raw", parts, form="csv")
    with pytest.raises(
        DataError,
        match=r"nl_item_train.csv: data row 4, column 'column 49': label 3 is not 0 or 1 or 2",
    ):
        _read(path, tmp_path)


def test_items_without_a_page_can_fail(raw_country, tmp_path: Path) -> None:
    """Check that ``orphan_items=fail`` names the first item whose page is missing."""
    path = raw_country.write(tmp_path / "raw", _parts(raw_country), form="csv")
    with pytest.raises(
        DataError, match=r"nl_item_train.csv: data row 3: page id 99 is not in .*nl_user_train.csv"
    ):
        _read(path, tmp_path, orphan_items="fail")


def test_repeated_page_id(raw_country, tmp_path: Path) -> None:
    """Check that a page id twice in the user file is refused with both rows."""
    parts = _parts(raw_country)
    parts["user_train"].append(raw_country.user(20))
    path = raw_country.write(tmp_path / "raw", parts, form="csv")
    with pytest.raises(DataError, match=r"page id 20 appears on data rows 2 and 4"):
        _read(path, tmp_path)


def test_no_item_matches_a_page(raw_country, tmp_path: Path) -> None:
    """Check that a join without any row is refused as an empty split."""
    parts = _parts(raw_country)
    parts["item_test"] = [raw_country.item(1, 77, 0)]
    path = raw_country.write(tmp_path / "raw", parts, form="csv")
    with pytest.raises(DataError, match=r"no item has its page in .*would be empty"):
        _read(path, tmp_path, split="test")

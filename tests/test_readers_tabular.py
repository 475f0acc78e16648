"""Tests of the tabular reader: schema files in YAML and TOML, roles, and their errors."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taa.data.readers import detect_layout
from taa.data.readers.common import Session
from taa.data.readers.tabular import TabularReader
from taa.data.validate import ValidationOptions
from taa.errors import DataError

CSV = """session,country,price,when,click,cart,buy
5,fr,1.5,mon,1,1,0
5,de,2.0,tue,1,0,0
6,07,0.5,wed,1,1,1
"""

YAML = """group_key: session
categorical: [country]
numerical: [price]
tasks: [click, cart, buy]
ignore: [when]
train: rows.csv
test: rows.csv
"""

TOML = """group_key = "session"
categorical = ["country"]
numerical = ["price"]
tasks = ["click", "cart", "buy"]
ignore = ["when"]
train = "rows.csv"
test = "rows.csv"
"""


def _read(schema_file: Path, tmp_path: Path, split: str = "train") -> dict[str, list]:
    with Session(tmp_path / "scratch") as session:
        view = TabularReader(schema_file).load_split(session, "X", split, ValidationOptions())
        columns = session.numpy(f"SELECT * FROM ({view.relation})", "test")
        return {name: values.tolist() for name, values in columns.items()}


@pytest.mark.parametrize(("name", "text"), [("shop.yaml", YAML), ("shop.toml", TOML)])
def test_schema_file_roles(tmp_path: Path, name: str, text: str) -> None:
    """Check that YAML and TOML schema files give the same columns, three tasks, text codes."""
    (tmp_path / "rows.csv").write_text(CSV)
    (tmp_path / name).write_text(text)
    columns = _read(tmp_path / name, tmp_path)
    assert list(columns) == ["session", "country", "price", "click", "cart", "buy", "__row"]
    assert columns["country"] == ["fr", "de", "07"]
    assert columns["buy"] == [0.0, 0.0, 1.0]


def test_layout_detected_from_suffix(tmp_path: Path) -> None:
    """Check that a .yaml file is read as the tabular layout."""
    (tmp_path / "shop.yaml").write_text(YAML)
    assert detect_layout(tmp_path / "shop.yaml") == "tabular"


def test_parquet_table(tmp_path: Path) -> None:
    """Check that a Parquet table's integer categorical column is read as integers."""
    table = pa.table(
        {
            "session": [1, 1],
            "country": [3, 4],
            "price": [0.5, 0.25],
            "when": ["a", "b"],
            "click": [1, 0],
            "cart": [0, 0],
            "buy": [0, 0],
        }
    )
    pq.write_table(table, tmp_path / "rows.parquet")
    (tmp_path / "shop.yaml").write_text(YAML.replace("rows.csv", "rows.parquet"))
    columns = _read(tmp_path / "shop.yaml", tmp_path)
    assert columns["country"] == [3, 4]
    assert columns["price"] == [0.5, 0.25]


def test_label_declared_as_feature(tmp_path: Path) -> None:
    """Check that a task label listed as a feature is refused."""
    (tmp_path / "shop.yaml").write_text(
        YAML.replace("numerical: [price]", "numerical: [price, buy]")
    )
    with pytest.raises(DataError, match=r"\['buy'\] declared as features.*can never be features"):
        TabularReader(tmp_path / "shop.yaml")


def test_group_key_declared_as_feature(tmp_path: Path) -> None:
    """Check that the group key listed as a feature is refused."""
    text = YAML.replace("categorical: [country]", "categorical: [country, session]")
    (tmp_path / "shop.yaml").write_text(text)
    with pytest.raises(DataError, match=r"\['session'\] declared as features"):
        TabularReader(tmp_path / "shop.yaml")


def test_column_with_two_roles(tmp_path: Path) -> None:
    """Check that a column listed both as a feature and ignored is refused."""
    (tmp_path / "shop.yaml").write_text(YAML.replace("ignore: [when]", "ignore: [when, price]"))
    with pytest.raises(DataError, match=r"columns \['price'\] are declared more than once"):
        TabularReader(tmp_path / "shop.yaml")


def test_unknown_key(tmp_path: Path) -> None:
    """Check that a misspelt key is named with the allowed ones."""
    (tmp_path / "shop.yaml").write_text(YAML + "taks: [click]\n")
    with pytest.raises(DataError, match=r"unknown keys \['taks'\]; allowed: \["):
        TabularReader(tmp_path / "shop.yaml")


def test_missing_key(tmp_path: Path) -> None:
    """Check that a schema file without tasks is refused."""
    (tmp_path / "shop.yaml").write_text(YAML.replace("tasks: [click, cart, buy]\n", ""))
    with pytest.raises(DataError, match=r"missing keys \['tasks'\]"):
        TabularReader(tmp_path / "shop.yaml")


def test_list_of_wrong_type(tmp_path: Path) -> None:
    """Check that a role given as text instead of a list is refused."""
    (tmp_path / "shop.yaml").write_text(YAML.replace("numerical: [price]", "numerical: price"))
    with pytest.raises(DataError, match=r"`numerical` must be a list of column names, got 'price'"):
        TabularReader(tmp_path / "shop.yaml")


def test_invalid_syntax(tmp_path: Path) -> None:
    """Check that a TOML syntax error names the file."""
    (tmp_path / "shop.toml").write_text("group_key = \n")
    with pytest.raises(DataError, match=r"shop.toml: not a valid schema file"):
        TabularReader(tmp_path / "shop.toml")


def test_undeclared_column(tmp_path: Path) -> None:
    """Check that a file column no role names is refused with the `ignore` hint."""
    (tmp_path / "rows.csv").write_text(CSV)
    (tmp_path / "shop.yaml").write_text(YAML.replace("ignore: [when]", "ignore: []"))
    with pytest.raises(DataError, match=r"unexpected columns \['when'\]; declare them \(or list"):
        _read(tmp_path / "shop.yaml", tmp_path)


def test_missing_table_file(tmp_path: Path) -> None:
    """Check that a schema naming an absent file says which split and path."""
    (tmp_path / "shop.yaml").write_text(YAML)
    with pytest.raises(DataError, match=r"the train file .*rows.csv does not exist"):
        _read(tmp_path / "shop.yaml", tmp_path)


def test_later_task_without_earlier_one(tmp_path: Path) -> None:
    """Check that the funnel rule covers every earlier task (buy without cart)."""
    (tmp_path / "rows.csv").write_text(CSV.replace("6,07,0.5,wed,1,1,1", "6,07,0.5,wed,1,0,1"))
    (tmp_path / "shop.yaml").write_text(YAML)
    with pytest.raises(DataError, match=r"data row 3: buy is 1 but 'cart' is 0"):
        _read(tmp_path / "shop.yaml", tmp_path)


@pytest.mark.parametrize("name", ["shop.yaml", "shop.toml"])
def test_schema_file_not_utf8(tmp_path: Path, name: str) -> None:
    """Check that a schema file with Latin-1 bytes is a DataError naming file and line."""
    (tmp_path / name).write_bytes(b"# shop\n# caf\xe9\n")
    with pytest.raises(DataError, match=rf"{name}: line 2 is not UTF-8 text \(byte 0xe9"):
        TabularReader(tmp_path / name)


@pytest.mark.parametrize("line", [2, 3])
def test_csv_not_utf8_names_the_line(tmp_path: Path, line: int) -> None:
    """Check that a Latin-1 byte on a data line is reported on that line, not on line 1."""
    lines = [b"g,c,y", b"1,a,1", b"2,b,0"]
    lines[line - 1] = lines[line - 1].replace(b",a,", b",caf\xe9,").replace(b",b,", b",caf\xe9,")
    (tmp_path / "t.csv").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "s.yaml").write_text(
        "group_key: g\ncategorical: [c]\ntasks: [y]\ntrain: t.csv\ntest: t.csv\n"
    )
    with pytest.raises(DataError, match=rf"t.csv: line {line} is not UTF-8 text"):
        _read(tmp_path / "s.yaml", tmp_path)


def test_csv_header_not_utf8(tmp_path: Path) -> None:
    """Check that a Latin-1 byte in the header is reported on line 1 with its offset."""
    (tmp_path / "t.csv").write_bytes(b"g,c\xe9,y\n1,a,1\n")
    (tmp_path / "s.yaml").write_text(
        "group_key: g\ncategorical: [c]\ntasks: [y]\ntrain: t.csv\ntest: t.csv\n"
    )
    with pytest.raises(DataError, match=r"t.csv: line 1 is not UTF-8 text \(byte 0xe9 at offset 3"):
        _read(tmp_path / "s.yaml", tmp_path)

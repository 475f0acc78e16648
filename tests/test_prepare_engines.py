"""Tests that the arrow engine of ``taa prepare`` gives what the DuckDB engine gives."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from taa.data.prepare import PrepareConfig, prepare_dataset
from taa.data.readers import tianchi
from taa.errors import ConfigError, DataError

FALLBACK = "read by the duckdb engine"


def _prepare(out: Path, domains: dict[str, Path], engine: str, **options: object) -> Path:
    entries = tuple(f"{name}={path}" for name, path in domains.items())
    prepare_dataset(PrepareConfig(out=out, domains=entries, engine=engine, quiet=True, **options))
    return out


def _assert_same_dataset(first: Path, second: Path, domains: list[str]) -> None:
    """Same vocabulary text, schema (statistics to 1e-12), Parquet schema, rows and order."""
    assert (first / "vocabulary.json").read_text() == (second / "vocabulary.json").read_text()
    schemas = [json.loads((folder / "schema.json").read_text()) for folder in (first, second)]
    numerical = [schema.pop("numerical") for schema in schemas]
    for schema in schemas:
        schema["extra"].pop("sources")  # the folders' paths
    assert schemas[0] == schemas[1]
    assert [item["name"] for item in numerical[0]] == [item["name"] for item in numerical[1]]
    for one, other in zip(numerical[0], numerical[1], strict=True):
        for key in ("mean", "std", "minimum", "maximum"):
            # DuckDB sums in parallel, in an order that depends on the row groups
            assert one[key] == pytest.approx(other[key], rel=1e-12, abs=1e-300), (one, key)
    for name in domains:
        for split in ("train", "test"):
            tables = [
                pq.read_table(folder / name / f"{split}.parquet") for folder in (first, second)
            ]
            assert tables[0].schema.equals(tables[1].schema, check_metadata=False)
            assert tables[0].num_rows > 0
            assert tables[0].equals(tables[1]), (name, split)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two simulated countries in the raw layout (outer zips)."""
    from taa.data.simulate import SimulateConfig, simulate_countries

    out = tmp_path_factory.mktemp("engines") / "sim"
    simulate_countries(SimulateConfig(out=out, countries=("es", "fr"), rows=2000, layout="raw"))
    return {code: out / "raw" / f"aliexpress_{code}_datasets.zip" for code in ("ES", "FR")}


def test_engines_agree_on_simulated_countries(
    simulated: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that both engines prepare the same dataset from two simulated raw countries,
    the arrow engine reading every split itself (no fallback)."""
    duckdb = _prepare(tmp_path / "duckdb", simulated, "duckdb")
    with caplog.at_level(logging.INFO, logger="taa.data.readers.tianchi"):
        arrow = _prepare(tmp_path / "arrow", simulated, "arrow")
    assert FALLBACK not in caplog.text
    _assert_same_dataset(duckdb, arrow, ["ES", "FR"])


def _orphan_parts(raw) -> dict[str, list[list[str]]]:
    """Items whose pages come in another order than the page file, one item without a page."""
    return {
        "user_train": [raw.user(30), raw.user(10), raw.user(20)],
        "item_train": [
            raw.item(1, 20, 0),
            raw.item(2, 10, 2),
            raw.item(3, 99, 1),
            raw.item(4, 30, 1),
            raw.item(5, 10, 0),
        ],
        "user_test": [raw.user(40), raw.user(7)],
        "item_test": [raw.item(1, 40, 1), raw.item(2, 7, 0), raw.item(3, 40, 2)],
    }


@pytest.mark.parametrize("form", ["outer", "inner", "csv"])
def test_engines_agree_with_orphans(
    raw_country, tmp_path: Path, form: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that both engines drop the same orphan item and keep the item order, whatever
    form the download comes in, and count the orphan alike."""
    path = raw_country.write(tmp_path / "raw", _orphan_parts(raw_country), form=form)
    duckdb = _prepare(tmp_path / "duckdb", {"NL": path}, "duckdb")
    with caplog.at_level(logging.INFO, logger="taa.data.readers.tianchi"):
        arrow = _prepare(tmp_path / "arrow", {"NL": path}, "arrow")
    assert FALLBACK not in caplog.text
    _assert_same_dataset(duckdb, arrow, ["NL"])
    schema = json.loads((arrow / "schema.json").read_text())
    assert schema["extra"]["orphan_items"]["NL"] == {"train": 1, "test": 0}
    rows = pq.read_table(arrow / "NL" / "train.parquet").column("search_id").to_pylist()
    assert rows == [20, 10, 30, 10]


def test_large_page_file_falls_back(
    raw_country, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that a page file above the arrow engine's memory bound is read by DuckDB, with
    the same result."""
    path = raw_country.write(tmp_path / "raw", _orphan_parts(raw_country))
    duckdb = _prepare(tmp_path / "duckdb", {"NL": path}, "duckdb")
    monkeypatch.setattr(tianchi, "ARROW_USER_BYTES", 10)
    with caplog.at_level(logging.INFO, logger="taa.data.readers.tianchi"):
        arrow = _prepare(tmp_path / "arrow", {"NL": path}, "arrow")
    assert "page file of" in caplog.text and FALLBACK in caplog.text
    _assert_same_dataset(duckdb, arrow, ["NL"])


def test_bad_value_gives_the_duckdb_message(raw_country, tmp_path: Path) -> None:
    """Check that a value the arrow engine cannot parse is reported as the DuckDB engine
    reports it (file, line, column, value)."""
    parts = _orphan_parts(raw_country)
    parts["item_train"][1][5] = "abc"
    path = raw_country.write(tmp_path / "raw", parts)
    with pytest.raises(DataError, match=r"nl_item_train.csv: line 2, column 'column 6': 'abc'"):
        _prepare(tmp_path / "arrow", {"NL": path}, "arrow")


def test_empty_numerical_value_imputed_alike(raw_country, tmp_path: Path) -> None:
    """Check that with --nan impute an empty numerical value gives the same dataset with
    both engines (the arrow engine leaves such a split to DuckDB)."""
    parts = _orphan_parts(raw_country)
    parts["user_train"][0][10] = ""
    path = raw_country.write(tmp_path / "raw", parts)
    with pytest.warns(UserWarning):
        duckdb = _prepare(tmp_path / "duckdb", {"NL": path}, "duckdb", nan="impute")
    with pytest.warns(UserWarning):
        arrow = _prepare(tmp_path / "arrow", {"NL": path}, "arrow", nan="impute")
    _assert_same_dataset(duckdb, arrow, ["NL"])


def test_unknown_engine(tmp_path: Path) -> None:
    """Check that an unknown --engine is refused, naming the choices."""
    with pytest.raises(ConfigError, match=r"option --engine got 'polars'.*'arrow', 'duckdb'"):
        PrepareConfig(out=tmp_path / "out", domains=("NL=x",), engine="polars")


def test_profile_gathers_distinct_codes() -> None:
    """Check that a profile fed in uneven batches, then merged with another, gives the
    distinct codes of all rows, through both its small-range and its wide-range paths."""
    import numpy as np

    from taa.data.readers.common import Profile

    rng = np.random.default_rng(3)
    codes = np.concatenate([rng.integers(-5, 40, 700), [10**12, -(10**12)]])
    first, second = Profile(["c"]), Profile(["c"])
    for start, stop in [(0, 1), (1, 300), (300, 300), (300, 702)]:
        first.add({"c": codes[start:stop]})
    second.add({"c": np.array([7, 7, 99], dtype=np.int64)})
    merged = Profile.merge([first, second])
    assert merged.values("c") == sorted({*codes.tolist(), 99})
    assert Profile(["c"]).values("c") == []


def _repeated_page(parts: dict, raw) -> None:
    parts["user_train"].append(raw.user(10))


def _label_three(parts: dict, raw) -> None:
    parts["item_train"][3] = raw.item(4, 30, 3)


def _no_matching_page(parts: dict, raw) -> None:
    parts["item_test"] = [raw.item(1, 55, 0)]


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        (_repeated_page, {}, r"page id 10 appears on data rows 2 and 4"),
        (_label_three, {}, r"data row 4, column 'column 49': label 3 is not 0 or 1 or 2"),
        (
            lambda parts, raw: None,
            {"orphan_items": "fail"},
            r"nl_item_train.csv: data row 3: page id 99 is not in .*nl_user_train.csv",
        ),
        (_no_matching_page, {}, r"no item has its page in .*would be empty"),
    ],
)
def test_arrow_engine_refuses_like_duckdb(
    raw_country, tmp_path: Path, change, options: dict, message: str
) -> None:
    """Check that input the arrow engine hands back to DuckDB is refused with the DuckDB
    engine's message, under both engines."""
    parts = _orphan_parts(raw_country)
    change(parts, raw_country)
    path = raw_country.write(tmp_path / "raw", parts)
    for engine in ("duckdb", "arrow"):
        with pytest.raises(DataError, match=message):
            _prepare(tmp_path / engine, {"NL": path}, engine, **options)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
@pytest.mark.parametrize(
    "value",
    # the last three are whole numbers once read as a double: text decides, not the double
    ["2.6", "99.7", "3.000000000000000001", "0.9999999999999999999", "9007199254740993.5"],
)
def test_raw_non_integer_code_refused(raw_country, tmp_path: Path, engine: str, value: str) -> None:
    """Check that a raw item code that is not a whole number is refused, never rounded."""
    parts = _orphan_parts(raw_country)
    parts["item_train"][2][18] = value  # item column 19 (categorical_10) of line 3
    path = raw_country.write(tmp_path / "raw", parts)
    with pytest.raises(
        DataError,
        match=rf"nl_item_train.csv: line 3, column 'column 19': '{re.escape(value)}' is not an "
        r"integer "
        r"category code \(data row 3;",
    ):
        _prepare(tmp_path / engine, {"NL": path}, engine)


@pytest.mark.parametrize("engine", ["duckdb", "arrow"])
def test_processed_non_integer_code_refused(tmp_path: Path, engine: str) -> None:
    """Check that a processed categorical value of 1.5 is refused with file, line, column."""
    from taa.data.readers.processed import PROCESSED_ROLES

    header = list(PROCESSED_ROLES.columns)
    rows = [[str(i // 2)] + [str(i % 3)] * 16 + ["0.5"] * 63 + [str(i % 2), "0"] for i in range(4)]
    rows[1][3] = "1.5"  # categorical_3 of data row 2 (line 3)
    folder = tmp_path / "X"
    folder.mkdir()
    text = "\n".join([",".join(header)] + [",".join(row) for row in rows]) + "\n"
    (folder / "train.csv").write_text(text)
    (folder / "test.csv").write_text(text)
    with pytest.raises(
        DataError,
        match=r"train.csv: line 3, column 'categorical_3': '1.5' is not an integer category "
        r"code \(data row 2;",
    ):
        _prepare(tmp_path / engine, {"X": folder}, engine)


def test_integer_code_written_as_float_accepted(raw_country, tmp_path: Path) -> None:
    """Check that a code written ``2.0``, ``2.000``, ``2e0`` or ``2.`` is the code 2 (the
    same vocabulary as ``2``)."""
    parts = _orphan_parts(raw_country)
    path = raw_country.write(tmp_path / "plain", parts)
    code = parts["item_train"][2][18]
    first = _prepare(tmp_path / "a", {"NL": path}, "duckdb")
    for spelling in (f"{code}.0", f"{code}.000", f"{code}e0", f"{code}."):
        parts["item_train"][2][18] = spelling
        dotted = raw_country.write(tmp_path / "dotted", parts)
        second = _prepare(tmp_path / "b", {"NL": dotted}, "duckdb", overwrite=True)
        assert (first / "vocabulary.json").read_text() == (second / "vocabulary.json").read_text()


def test_fallback_logs_one_short_line(
    raw_country, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that when DuckDB's parse error stops the arrow engine, the INFO line about the
    fallback is one short line (DuckDB's multi-line message only at DEBUG)."""
    parts = _orphan_parts(raw_country)
    parts["item_train"][1][5] = "abc"
    path = raw_country.write(tmp_path / "raw", parts)
    with caplog.at_level(logging.INFO, logger="taa"), pytest.raises(DataError):
        _prepare(tmp_path / "arrow", {"NL": path}, "arrow")
    lines = [r.getMessage() for r in caplog.records if FALLBACK in r.getMessage()]
    assert lines == ["NL/train: read by the duckdb engine (the arrow engine stopped: "
                     "ConversionException, details at -vv)"]  # fmt: skip

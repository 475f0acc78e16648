"""Tests of the integer lookup table that encodes integer category codes inside DuckDB."""

from __future__ import annotations

from pathlib import Path

import pytest

from taa.data.encode import LOOKUP_SPAN, _category_code, integer_lookup, register_vocabulary
from taa.data.readers.common import Session
from taa.data.vocabulary import Vocabulary

# Raw codes, and their indices worked out by hand for the vocabulary ("-2", "0", "3", "x",
# "07"): -2 -> 1, 0 -> 2, 3 -> 3; "x" and "07" can never equal an integer's text; everything
# else, NULL and codes outside -2..3 included, is out of vocabulary (0).
CODES = [-3, -2, -1, 0, 1, 2, 3, 4, None, 70_000, -70_000]
EXPECTED = [0, 1, 0, 2, 0, 0, 3, 0, 0, 0, 0]
VALUES = ("-2", "0", "3", "x", "07")


def test_integer_lookup_by_hand() -> None:
    """Check the table from the smallest code, with 0 for codes the vocabulary lacks and
    non-canonical integer text (``07``, ``-0``) left out."""
    assert integer_lookup(list(VALUES)) == (-2, (1, 0, 2, 0, 0, 3))
    assert integer_lookup(["-0", "5"]) == (5, (2,))
    assert integer_lookup(["a", "b"]) is None


def test_integer_lookup_refuses_a_wide_span() -> None:
    """Check that codes spanning more than LOOKUP_SPAN values get no table (the ENUM stays)."""
    assert integer_lookup(["0", str(LOOKUP_SPAN - 1)]) is not None
    assert integer_lookup(["0", str(LOOKUP_SPAN)]) is None


@pytest.mark.parametrize("column_type", ["BIGINT", "INTEGER", "SMALLINT", "UBIGINT"])
def test_lookup_and_enum_give_the_same_indices(tmp_path: Path, column_type: str) -> None:
    """Check that the lookup table and the text ENUM give the hand-worked indices."""
    codes = CODES if not column_type.startswith("U") else [c for c in CODES if (c or 0) >= 0]
    expected = EXPECTED if codes is CODES else [EXPECTED[CODES.index(c)] for c in codes]
    if column_type == "SMALLINT":
        keep = [i for i, c in enumerate(codes) if c is None or abs(c) < 2**15]
        codes, expected = [codes[i] for i in keep], [expected[i] for i in keep]
    with Session(tmp_path) as session:
        types = register_vocabulary(session, Vocabulary({"f": VALUES}), ["f"])
        assert types["f"].codes is not None
        session.rows(f"CREATE TABLE t (i INTEGER, f {column_type})", "test")
        for position, code in enumerate(codes):
            session.rows("INSERT INTO t VALUES ($1, $2)", "test", [position, code])
        for integer in (True, False):
            sql = _category_code("f", types["f"], integer)
            rows = session.rows(f"SELECT coalesce({sql}, 0) FROM t ORDER BY i", "test")
            assert [row[0] for row in rows] == expected, (column_type, integer)


def test_prepared_rows_keep_their_order_through_the_enum_path(tmp_path: Path) -> None:
    """Check that a text field and an integer field too wide for a lookup table (both on
    the ENUM path) encode to the hand-worked indices, rows in file order, unseen values 0."""
    import pyarrow.parquet as pq

    from taa.data.prepare import PrepareConfig, prepare_dataset

    wide = 1 << 20  # codes 0 and 2**20 span more than LOOKUP_SPAN values
    train = f"g,shop,code,x,y\n1,b,0,0.5,1\n1,a,{wide},0.25,0\n2,c,0,0.75,0\n"
    # test rows: shop z and code 7 were never seen; order deliberately not sorted
    test = f"g,shop,code,x,y\n9,c,{wide},0.5,0\n8,z,7,0.5,1\n7,a,0,0.5,0\n7,b,7,0.5,1\n"
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "test.csv").write_text(test)
    (tmp_path / "shop.yaml").write_text(
        "group_key: g\ncategorical: [shop, code]\nnumerical: [x]\ntasks: [y]\n"
        "train: train.csv\ntest: test.csv\n"
    )
    out = tmp_path / "data"
    prepare_dataset(PrepareConfig(out=out, domains=(f"S={tmp_path / 'shop.yaml'}",), quiet=True))
    table = pq.read_table(out / "S" / "test.parquet").to_pydict()
    # vocabulary: shop a=1, b=2, c=3; code 0=1, 1048576=2 (integers by value)
    assert table["g"] == [9, 8, 7, 7]
    assert table["shop"] == [3, 0, 1, 2]
    assert table["code"] == [2, 0, 1, 0]
    assert table["y"] == [0, 1, 0, 1]

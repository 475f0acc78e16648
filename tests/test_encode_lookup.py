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

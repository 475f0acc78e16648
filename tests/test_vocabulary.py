"""Tests of the vocabulary: value text, order, file round trip, digest and NumPy encoding."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from taa.data.encode import encode_categorical
from taa.data.vocabulary import Vocabulary, canonical_value, sort_values
from taa.errors import DataError, SchemaMismatchError


@pytest.mark.parametrize(
    ("value", "text"),
    [(7, "7"), (np.int64(-3), "-3"), (7.0, "7"), ("07", "07"), (b"x", "x"), (None, None)],
)
def test_canonical_value(value: object, text: str | None) -> None:
    """Check that integers, integral floats, strings and bytes map to one text form."""
    assert canonical_value(value) == text


def test_canonical_value_of_nan_is_missing() -> None:
    """Check that a NaN category value counts as missing."""
    assert canonical_value(float("nan")) is None


def test_sort_values_puts_integers_in_numeric_order_before_text() -> None:
    """Check the vocabulary order: integers by value, then other text alphabetically."""
    assert sort_values(["b", "10", "9", "a", "-2", "9"]) == ["-2", "9", "10", "a", "b"]


def test_indices_start_at_one() -> None:
    """Check that the first value gets index 1 (0 is reserved) and size counts the OOV row."""
    vocabulary = Vocabulary({"f": ("3", "5")})
    assert vocabulary.index("f") == {"3": 1, "5": 2}
    assert vocabulary.size("f") == 3


def test_save_and_load_round_trip(tmp_path) -> None:
    """Check that a saved vocabulary loads back equal, and its digest is the file's SHA-256."""
    vocabulary = Vocabulary({"a": ("1", "2"), "b": ("x",)})
    digest = vocabulary.save(tmp_path)
    text = (tmp_path / "vocabulary.json").read_bytes()
    assert digest == hashlib.sha256(text).hexdigest()
    assert json.loads(text)["fields"] == {"a": {"1": 1, "2": 2}, "b": {"x": 1}}
    assert Vocabulary.load(tmp_path, expected_digest=digest) == vocabulary


def test_load_refuses_a_changed_file(tmp_path) -> None:
    """Check that a vocabulary edited after preparing is refused by its digest."""
    digest = Vocabulary({"a": ("1",)}).save(tmp_path)
    path = tmp_path / "vocabulary.json"
    path.write_text(path.read_text().replace('"1": 1', '"2": 1'))
    with pytest.raises(SchemaMismatchError, match=r"vocabulary digest .* does not match"):
        Vocabulary.load(tmp_path, expected_digest=digest)


def test_load_refuses_indices_with_gaps(tmp_path) -> None:
    """Check that indices other than 1..n are refused, naming the field."""
    (tmp_path / "vocabulary.json").write_text(json.dumps({"fields": {"f": {"a": 1, "b": 3}}}))
    with pytest.raises(DataError, match=r"field 'f' has indices \[1, 3\].*expected 1\.\.n"):
        Vocabulary.load(tmp_path)


def test_load_refuses_a_missing_file(tmp_path) -> None:
    """Check the message when the folder holds no vocabulary."""
    with pytest.raises(DataError, match=r"no vocabulary file"):
        Vocabulary.load(tmp_path)


def test_unknown_field_is_named() -> None:
    """Check that asking for a field the vocabulary lacks names it and the known fields."""
    with pytest.raises(DataError, match=r"no field 'z'; its fields are \['a'\]"):
        Vocabulary({"a": ("1",)}).index("z")


def test_encode_categorical_integers() -> None:
    """Check integer codes: known ones get their index, unseen ones 0."""
    vocabulary = Vocabulary({"f": ("2", "7", "9")})
    codes = encode_categorical(np.array([9, 2, 3, 7, 9]), "f", vocabulary)
    assert codes.dtype == np.int32
    assert codes.tolist() == [3, 1, 0, 2, 3]


def test_encode_categorical_text_and_missing() -> None:
    """Check text values and missing ones (None, NaN) in one object array."""
    vocabulary = Vocabulary({"f": ("a", "b")})
    codes = encode_categorical(
        np.array(["b", None, "c", float("nan"), "a"], dtype=object), "f", vocabulary
    )
    assert codes.tolist() == [2, 0, 0, 0, 1]


def test_encode_categorical_empty() -> None:
    """Check that no values give an empty int32 array."""
    codes = encode_categorical(np.array([], dtype=np.int64), "f", Vocabulary({"f": ("1",)}))
    assert codes.dtype == np.int32
    assert codes.shape == (0,)

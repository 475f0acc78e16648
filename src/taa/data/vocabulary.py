"""The category vocabulary of a prepared dataset: raw value -> index, per categorical field.

Raw values are kept as text: an integer code ``7`` and the string ``"7"`` are the same
category. Indices run ``1..n`` in the order of :func:`sort_values` (numeric order when every
value of a field is an integer, text order otherwise); index :data:`OOV_INDEX` (0) is for
values the vocabulary never saw, and for missing values.

``vocabulary.json`` is written once per dataset; the schema stores the SHA-256 of its text
(``Schema.vocabulary_digest``) so a model or an export can prove which encoding it expects.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taa.data.schema import OOV_INDEX, VOCABULARY_FILE
from taa.errors import DataError, SchemaMismatchError

VOCABULARY_VERSION = 1


def canonical_value(value: Any) -> str | None:
    """The text form of one raw category value, or ``None`` for a missing value.

    Integers (and floats holding an integer) become their decimal digits, bytes are decoded
    as UTF-8, strings stay as they are.

    Example:
        >>> canonical_value(7), canonical_value(7.0), canonical_value("07"), canonical_value(None)
        ('7', '7', '07', None)
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    if isinstance(value, bool | np.bool_):
        return str(int(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return str(value)


def sort_values(values: Iterable[str]) -> list[str]:
    """Distinct values in vocabulary order: integers by value first, then other text.

    Example:
        >>> sort_values(["10", "9", "b", "-1", "a"])
        ['-1', '9', '10', 'a', 'b']
    """

    def key(value: str) -> tuple[int, int, str]:
        try:
            return (0, int(value), "")
        except ValueError:
            return (1, 0, value)

    return sorted(set(values), key=key)


@dataclass(frozen=True)
class Vocabulary:
    """Raw category values per field, in index order: ``values[field][i]`` has index ``i + 1``.

    Args:
        values: field name -> distinct raw values (text, see :func:`canonical_value`).

    Example:
        >>> vocabulary = Vocabulary({"country": ("7", "8", "9")})
        >>> vocabulary.index("country")["8"], vocabulary.size("country")
        (2, 4)
    """

    values: dict[str, tuple[str, ...]]
    _indices: dict[str, dict[str, int]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def fields(self) -> list[str]:
        return list(self.values)

    def size(self, name: str) -> int:
        """Embedding rows the field needs: its values plus the out-of-vocabulary row."""
        return len(self._field(name)) + 1

    def index(self, name: str) -> dict[str, int]:
        """Raw value -> index (``1..n``) of one field."""
        if name not in self._indices:
            self._indices[name] = {
                value: position + 1 for position, value in enumerate(self._field(name))
            }
        return self._indices[name]

    def _field(self, name: str) -> tuple[str, ...]:
        if name not in self.values:
            raise DataError(
                f"vocabulary has no field {name!r}; its fields are {self.fields}; "
                "re-create the dataset with `taa prepare`"
            )
        return self.values[name]

    def to_json(self) -> str:
        """The exact text of ``vocabulary.json`` (its SHA-256 is the vocabulary digest)."""
        data = {
            "version": VOCABULARY_VERSION,
            "oov_index": OOV_INDEX,
            "fields": {name: self.index(name) for name in self.values},
        }
        return json.dumps(data, indent=1, ensure_ascii=False) + "\n"

    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, directory: str | Path) -> str:
        """Write ``vocabulary.json`` into ``directory`` atomically; return its digest."""
        from taa.io import atomic_write_text

        text = self.to_json()
        atomic_write_text(Path(directory) / VOCABULARY_FILE, text)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_mapping(cls, fields: Mapping[str, Mapping[str, int]], where: str) -> Vocabulary:
        """Build from ``{field: {value: index}}``, checking the indices are ``1..n``."""
        values: dict[str, tuple[str, ...]] = {}
        for name, mapping in fields.items():
            ordered = sorted(mapping.items(), key=lambda item: item[1])
            indices = [index for _, index in ordered]
            if indices != list(range(1, len(ordered) + 1)):
                raise DataError(
                    f"{where}: field {name!r} has indices {indices[:5]}...; expected 1..n with "
                    "no gaps; re-create the dataset with `taa prepare`"
                )
            values[name] = tuple(str(value) for value, _ in ordered)
        return cls(values)

    @classmethod
    def load(cls, directory: str | Path, expected_digest: str | None = None) -> Vocabulary:
        """Read ``vocabulary.json`` from a prepared dataset folder (or the file itself).

        Raises:
            SchemaMismatchError: ``expected_digest`` is given and the file's digest differs.
        """
        path = Path(directory)
        if path.is_dir():
            path = path / VOCABULARY_FILE
        if not path.is_file():
            raise DataError(f"{path}: no vocabulary file; point to a folder made by `taa prepare`")
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if expected_digest and digest != expected_digest:
            raise SchemaMismatchError(
                f"{path}: vocabulary digest {digest[:16]} does not match the schema's "
                f"{expected_digest[:16]}; the file was changed after `taa prepare`: prepare "
                "the dataset again"
            )
        try:
            data = json.loads(text)
            fields = data["fields"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(
                f"{path}: not a vocabulary file ({error}); re-create it with `taa prepare`"
            ) from error
        return cls.from_mapping(fields, str(path))

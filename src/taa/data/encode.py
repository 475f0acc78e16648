"""Encoding rows with a dataset's vocabulary and statistics, for preparing and for scoring.

Encoding maps each categorical value to its vocabulary index (``1..n``; unseen or missing
values to :data:`~taa.data.schema.OOV_INDEX` 0), replaces NaN, infinite or empty numerical
values by the field's training mean, and casts to the prepared dtypes: int64 group key,
int32 categoricals, float32 numericals, int8 labels. Inside DuckDB each field's vocabulary
is an ``ENUM`` type, so encoding is a projection and keeps the rows in order.

:func:`load_for_scoring` encodes a file in any layout ``taa prepare`` reads (for ``taa
predict``); :func:`encode_categorical` encodes values in NumPy (for exports).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taa.data.readers.common import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    ROW_COLUMN,
    DomainReader,
    Roles,
    Session,
    SplitView,
    flat_table,
    sql_name,
)
from taa.data.schema import OOV_INDEX, Schema
from taa.data.validate import SCORING_DOMAIN, ValidationOptions
from taa.data.vocabulary import Vocabulary, canonical_value
from taa.errors import ConfigError, SchemaMismatchError

logger = logging.getLogger(__name__)

ROW_ID = "row"


def encode_categorical(values: Any, field: str, vocabulary: Vocabulary) -> np.ndarray:
    """Vocabulary indices of raw values of one field; unseen or missing values give 0.

    Args:
        values: raw values ``[R]`` (integers, strings, or a mix; ``None``/NaN is missing).
        field: the categorical field's name.
        vocabulary: the dataset's vocabulary.

    Returns:
        int32 ``[R]`` indices in ``0..vocabulary.size(field) - 1``.

    Example:
        >>> vocabulary = Vocabulary({"country": ("7", "8", "9")})
        >>> encode_categorical([9, 7, 3, None], "country", vocabulary).tolist()
        [3, 1, 0, 0]
    """
    index = vocabulary.index(field)
    array = np.asarray(values)
    if array.ndim != 1:
        raise ConfigError(f"encode_categorical expects a 1-d array of values, got {array.shape}")
    if array.dtype.kind in "iub":
        distinct, inverse = np.unique(array, return_inverse=True)
        codes = np.array([index.get(canonical_value(value), OOV_INDEX) for value in distinct])
        return codes.astype(np.int32)[inverse] if len(array) else np.zeros(0, np.int32)
    return np.fromiter(
        (index.get(canonical_value(value), OOV_INDEX) for value in array.tolist()),
        dtype=np.int32,
        count=len(array),
    )


# An integer field whose vocabulary spans at most this many consecutive codes is encoded by
# indexing a constant list (about 2.3x faster than the text ENUM cast on raw AliExpress
# data); wider ranges keep the ENUM.
LOOKUP_SPAN = 1 << 16
_INTEGER_TEXT = re.compile(r"0|-?[1-9][0-9]*")
_INTEGER_TYPES = frozenset(
    f"{sign}{width}"
    for sign in ("", "U")
    for width in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT")
)


@dataclass(frozen=True)
class FieldCodes:
    """How one categorical field is encoded inside DuckDB.

    Attributes:
        enum: the ``ENUM`` type whose codes follow the vocabulary's order (``None`` for a
            field with no known value); its values are also in the temporary table
            ``<enum>_values`` (column ``value``).
        low: the smallest integer code of the vocabulary (with ``codes``).
        codes: vocabulary index of each integer ``low, low + 1, ...`` (0 for codes the
            vocabulary does not hold), or ``None`` when the field's integer codes span more
            than :data:`LOOKUP_SPAN` values or it has none.
    """

    enum: str | None
    low: int = 0
    codes: tuple[int, ...] | None = None


def integer_lookup(values: Sequence[str]) -> tuple[int, tuple[int, ...]] | None:
    """``(low, codes)`` mapping the integer values of a vocabulary field to their indices.

    Only values written as DuckDB writes an integer (``7``, ``-3``; not ``07`` or ``7.0``)
    can equal an integer cast to text, so only they enter the table.

    Example:
        >>> integer_lookup(["3", "5", "x"])
        (3, (1, 0, 2))
    """
    integers = {
        int(value): position + 1
        for position, value in enumerate(values)
        if _INTEGER_TEXT.fullmatch(value)
    }
    if not integers:
        return None
    low, high = min(integers), max(integers)
    if high - low + 1 > LOOKUP_SPAN:
        return None
    return low, tuple(integers.get(code, OOV_INDEX) for code in range(low, high + 1))


def register_vocabulary(
    session: Session, vocabulary: Vocabulary, fields: Sequence[str]
) -> dict[str, FieldCodes]:
    """Create one DuckDB ``ENUM`` per field whose codes follow the vocabulary's order, and
    the integer lookup table of each field that has one (see :class:`FieldCodes`).

    Returns:
        field -> its :class:`FieldCodes`.
    """
    types: dict[str, FieldCodes] = {}
    for name in fields:
        values = list(vocabulary.values[name])
        if not values:
            types[name] = FieldCodes(enum=None)
            continue
        type_name = session.unique("vocabulary")
        session.rows(
            f"CREATE TEMPORARY TABLE {type_name}_values AS SELECT unnest($1::VARCHAR[]) AS value, "
            "generate_subscripts($1::VARCHAR[], 1) AS position",
            "vocabulary",
            [values],
        )
        session.rows(
            f"CREATE TYPE {type_name} AS ENUM "
            f"(SELECT value FROM {type_name}_values ORDER BY position)",
            "vocabulary",
        )
        lookup = integer_lookup(values)
        if lookup is None:
            types[name] = FieldCodes(enum=type_name)
        else:
            types[name] = FieldCodes(enum=type_name, low=lookup[0], codes=lookup[1])
    return types


def integer_columns(session: Session, view: SplitView) -> frozenset[str]:
    """Columns of ``view``'s relation that DuckDB types as integers."""
    described = session.rows(f"DESCRIBE {view.relation}", view.origin)
    return frozenset(str(row[0]) for row in described if str(row[1]).upper() in _INTEGER_TYPES)


def _category_code(column: str, codes: FieldCodes, integer: bool) -> str:
    """SQL giving the vocabulary index of ``column`` (NULL when the value is unseen)."""
    if integer and codes.codes is not None:
        table = ", ".join(str(code) for code in codes.codes)
        high = codes.low + len(codes.codes) - 1
        return (
            f"CASE WHEN {column} BETWEEN {codes.low} AND {high} THEN "
            f"list_extract(CAST([{table}] AS INTEGER[]), CAST({column} - ({codes.low}) + 1 "
            "AS BIGINT)) END"
        )
    if codes.enum is None:
        return "NULL"
    # Membership first (a hash semi-join): DuckDB's failing TRY_CAST to an ENUM costs time
    # in proportion to the ENUM's size, 2-7 ms per unseen value of a 40,000-value field.
    text = f"CAST({column} AS VARCHAR)"
    return (
        f"CASE WHEN {text} IN (SELECT value FROM {codes.enum}_values) THEN "
        f"CAST(enum_code(CAST({text} AS {codes.enum})) AS INTEGER) + 1 END"
    )


def _uses_enum(codes: FieldCodes, integer: bool) -> bool:
    return codes.enum is not None and not (integer and codes.codes is not None)


def encoding_sql(
    view: SplitView,
    schema: Schema,
    enum_types: dict[str, FieldCodes],
    *,
    repair_labels: bool = False,
    keep_row: bool = False,
    integer: frozenset[str] = frozenset(),
) -> str:
    """A ``SELECT`` of ``view`` encoded with the schema's vocabulary and means.

    Args:
        view: the split to encode.
        schema: gives the columns, their order and the numerical means for imputation.
        enum_types: from :func:`register_vocabulary`.
        repair_labels: set a task's label to 1 where a later task is 1.
        keep_row: add the ``__row`` column (the input's 1-based data row).
        integer: columns of the view typed as integers (from :func:`integer_columns`); those
            with a lookup table are encoded through it, the same indices as the ``ENUM``.
    """
    parts = [f"CAST({sql_name(schema.group_key)} AS BIGINT) AS {sql_name(schema.group_key)}"]
    for name in schema.categorical_names:
        column = sql_name(name)
        code = _category_code(column, enum_types[name], name in integer)
        parts.append(f"coalesce({code}, {OOV_INDEX})::INTEGER AS {column}")
    for item in schema.numerical:
        column = sql_name(item.name)
        parts.append(
            f"CAST(CASE WHEN isfinite({column}) THEN {column} ELSE {float(item.mean)!r} END "
            f"AS FLOAT) AS {column}"
        )
    tasks = list(schema.tasks)
    for position, task in enumerate(tasks):
        label = sql_name(task)
        if repair_labels and position + 1 < len(tasks):
            label = f"greatest({', '.join(sql_name(name) for name in tasks[position:])})"
        parts.append(f"CAST({label} AS TINYINT) AS {sql_name(task)}")
    if keep_row:
        parts.append(ROW_COLUMN)
    # The ENUM path joins (see _category_code), after which only a sort restores the order.
    joined = any(_uses_enum(enum_types[name], name in integer) for name in schema.categorical_names)
    order = "" if view.in_file_order and not joined else f" ORDER BY {ROW_COLUMN}"
    return f"SELECT {', '.join(parts)} FROM ({view.relation}){order}"


@dataclass
class ScoringInput:
    """A file encoded for scoring.

    Attributes:
        split: the rows as tensors: categorical ``[R, F]``, numerical ``[R, N]``, labels
            ``[R, T]`` (NaN for tasks the file has no labels for), groups ``[R]``.
        ids: columns to write next to predictions: the group key and ``row``, the 1-based
            data row of the input file (the item file for a raw Tianchi input), each ``[R]``.
        oov_counts: categorical field -> rows encoded as out-of-vocabulary (or missing).
    """

    split: Any
    ids: dict[str, np.ndarray]
    oov_counts: dict[str, int]


class FlatFileReader(DomainReader):
    """One CSV (with a header) or Parquet file holding a dataset's columns, for scoring.

    Columns other than the schema's are ignored; task columns are optional. With
    ``integer_codes`` (a dataset prepared from raw or processed input) categorical CSV values
    must be integer codes, as ``taa prepare`` requires: ``1.5`` is refused, ``2.0`` is code 2.
    """

    layout = "processed"

    def __init__(self, path: Path, roles: Roles, *, integer_codes: bool = False) -> None:
        super().__init__(path)
        self._roles = roles
        self.integer_codes = integer_codes

    @property
    def roles(self) -> Roles:
        return self._roles

    def load_split(
        self,
        session: Session,
        domain: str,
        split: str,
        options: ValidationOptions,
        *,
        scoring: bool = False,
    ) -> SplitView:
        from taa.data.readers.processed import load_single_table

        table = flat_table(
            self.path,
            self.roles,
            unexpected="ignore",
            tasks_required=not scoring,
            text_categories=not self.integer_codes,
        )
        return load_single_table(
            session, table, self.roles, domain=domain, split=split, options=options
        )


def _schema_roles(schema: Schema) -> Roles:
    return Roles(
        group_key=schema.group_key,
        categorical=tuple(schema.categorical_names),
        numerical=tuple(schema.numerical_names),
        tasks=tuple(schema.tasks),
    )


def _integer_codes(schema: Schema) -> bool:
    """Whether the dataset was prepared from integer category codes (raw or processed input)."""
    sources = schema.extra.get("sources") or {}
    layouts = {str(item.get("layout")) for item in sources.values() if isinstance(item, dict)}
    return bool(layouts) and layouts <= {"tianchi", "processed"}


def scoring_reader(path: Path, layout: str, schema: Schema) -> DomainReader:
    """The reader for a file to score: a flat CSV/Parquet file or any ``taa prepare`` layout."""
    from taa.data.readers import LAYOUTS, open_reader

    if layout not in LAYOUTS:
        raise ConfigError(f"option --layout got {layout!r}; choose one of {list(LAYOUTS)}")
    suffix = path.suffix.lower()
    is_table = path.is_file() and suffix in CSV_SUFFIXES + PARQUET_SUFFIXES
    if is_table and layout in ("auto", "processed"):
        return FlatFileReader(path, _schema_roles(schema), integer_codes=_integer_codes(schema))
    reader = open_reader(path, layout)
    roles = _schema_roles(schema)
    if (reader.roles.group_key, reader.roles.features) != (roles.group_key, roles.features):
        raise SchemaMismatchError(
            f"{path}: its columns ({reader.layout} layout: group key {reader.roles.group_key!r}, "
            f"{len(reader.roles.features)} features) differ from the dataset's (group key "
            f"{roles.group_key!r}, {len(roles.features)} features); score it with the dataset "
            "it was prepared like"
        )
    return reader


def load_for_scoring(
    path: str | Path,
    dataset: str | Path,
    *,
    layout: str = "auto",
    memory_limit: str = "512MB",
) -> ScoringInput:
    """Read and encode a file with a prepared dataset's vocabulary and statistics.

    Accepts a CSV or Parquet file with the dataset's columns (labels optional, other columns
    ignored), a processed folder or a raw Tianchi download (its test split is scored), or a
    tabular schema file (its ``test`` file). Unseen categories become index 0 (counted and
    logged); NaN, infinite or empty numerical values become the training mean.

    Args:
        path: what to score.
        dataset: the prepared dataset folder whose schema and vocabulary encode it.
        layout: ``auto``, ``tianchi``, ``processed`` or ``tabular``.
        memory_limit: DuckDB's memory limit while reading.

    Returns:
        The encoded rows in input order (see :class:`ScoringInput`).
    """
    from taa.data.batches import TensorSplit

    path = Path(path)
    schema = Schema.load(dataset)
    vocabulary = Vocabulary.load(dataset, expected_digest=schema.vocabulary_digest or None)
    reader = scoring_reader(path, layout, schema)
    options = ValidationOptions(nan="impute", conversion_without_click="keep")
    with (
        tempfile.TemporaryDirectory(prefix="taa-score-") as scratch,
        Session(Path(scratch), memory_limit=memory_limit) as session,
    ):
        view = reader.load_split(session, SCORING_DOMAIN, "test", options, scoring=True)
        types = register_vocabulary(session, vocabulary, schema.categorical_names)
        integer = integer_columns(session, view)
        sql = encoding_sql(view, schema, types, keep_row=True, integer=integer)
        columns = session.numpy(sql, str(path))
    split = TensorSplit.from_arrays(columns, schema)
    oov = {name: int((columns[name] == OOV_INDEX).sum()) for name in schema.categorical_names}
    unseen = {name: count for name, count in oov.items() if count}
    if unseen:
        logger.info("%s: out-of-vocabulary values per field: %s", path, unseen)
    ids = {schema.group_key: columns[schema.group_key], ROW_ID: columns[ROW_COLUMN]}
    logger.info("encoded %d rows of %s for scoring", len(split), path)
    return ScoringInput(split=split, ids=ids, oov_counts=oov)

"""What every reader shares: column roles, a DuckDB session, and staging files into Parquet.

A reader turns a domain's input (a raw Tianchi download, a processed folder, a table with a
schema file) into one :class:`SplitView` per split: a SQL relation giving the canonical
columns (group key, categorical fields, numerical fields, task labels) and ``__row``, the
1-based data row of the row's main input file (used in messages and as a row id).

Every input file is first *staged*: DuckDB parses it with fixed column types and writes it to
an uncompressed Parquet file in the scratch folder, in file order, so later checks can name
the data row of a bad value (``file_row_number``) and every later pass reads a typed,
columnar file instead of text. Nothing is held in memory whole: DuckDB streams, spills to
the scratch folder above its memory limit, and writes Parquet in row groups.
"""

from __future__ import annotations

import csv
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from taa.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

# Column kinds: what a column is for, which decides its parse type and its checks.
KEY = "key"
CATEGORICAL = "categorical"
NUMERICAL = "numerical"
LABEL = "label"
IGNORED = "ignored"

ROW_COLUMN = "__row"
ENGINES = ("arrow", "duckdb")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
REJECTS_KEPT = 20
# Staged files are read once or twice: no compression, and no dictionary encoding (DuckDB
# would try it on every column, which doubles the cost of writing random-looking floats).
STAGED_PARQUET = "FORMAT parquet, COMPRESSION uncompressed, DICTIONARY_SIZE_LIMIT 1"

_EXPECTED = {
    KEY: "an integer (the group key)",
    CATEGORICAL: "an integer category code",
    NUMERICAL: "a number",
    LABEL: "a number (labels are 0 or 1)",
}


def sql_string(value: str | Path) -> str:
    """A SQL string literal: ``sql_string("it's")`` gives ``'it''s'``."""
    return "'" + str(value).replace("'", "''") + "'"


def sql_name(name: str) -> str:
    """A quoted SQL identifier: ``sql_name('a"b')`` gives ``"a""b"``."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Roles:
    """The canonical columns a domain provides, by role.

    Args:
        group_key: the integer column grouping rows into result pages (never a feature).
        categorical: categorical feature columns, in schema order (``F``).
        numerical: numerical feature columns, in schema order (``N``).
        tasks: 0/1 task label columns, in funnel order (``T``): a later task implies the
            earlier ones (a conversion implies a click).
    """

    group_key: str
    categorical: tuple[str, ...]
    numerical: tuple[str, ...]
    tasks: tuple[str, ...]

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.numerical

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.group_key, *self.features, *self.tasks)

    def kind(self, name: str) -> str:
        """The role of a canonical column: ``key``, ``categorical``, ``numerical`` or ``label``."""
        if name == self.group_key:
            return KEY
        if name in self.categorical:
            return CATEGORICAL
        if name in self.numerical:
            return NUMERICAL
        if name in self.tasks:
            return LABEL
        return IGNORED


@dataclass(frozen=True)
class Column:
    """One column of an input file.

    Args:
        source: its name in the file's header (or ``column <n>`` for a headerless CSV).
        kind: ``key``, ``categorical``, ``numerical``, ``label`` or ``ignored``.
        name: the staged (canonical) name; ``None`` for an ignored column.
    """

    source: str
    kind: str
    name: str | None = None


@dataclass(frozen=True)
class TableFile:
    """An input table and how to read it.

    Args:
        path: the CSV or Parquet file on disk.
        origin: how messages name it (the path, or ``archive.zip:member.csv``).
        columns: every column of a CSV in file order; the columns to keep of a Parquet file.
        header: the CSV's first line is a header.
        text_categories: categorical values are text (tabular CSVs); otherwise integer codes.
        label_values: the values a label column may hold.
    """

    path: Path
    origin: str
    columns: tuple[Column, ...]
    header: bool = True
    text_categories: bool = False
    label_values: tuple[int, ...] = (0, 1)

    @property
    def is_parquet(self) -> bool:
        return self.path.suffix.lower() in PARQUET_SUFFIXES

    def kept(self) -> list[Column]:
        return [column for column in self.columns if column.name is not None]

    def column_named(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)


@dataclass(frozen=True)
class StagedTable:
    """An input table staged as Parquet: typed canonical columns, rows in file order."""

    table: TableFile
    path: Path
    rows: int

    def scan(self) -> str:
        """A relation over the staged rows with ``file_row_number`` (0-based)."""
        return f"read_parquet({sql_string(self.path)}, file_row_number = true)"


@dataclass
class SplitView:
    """One split of one domain as a SQL relation, ready for statistics and encoding.

    Attributes:
        domain: domain name.
        split: ``train`` or ``test``.
        relation: a ``SELECT`` yielding the canonical columns and ``__row``.
        in_file_order: the relation yields rows in ``__row`` order (no join in it).
        origin: the main input file, for messages.
        rows: number of rows.
        tasks_present: tasks whose labels the input holds (all of them when preparing).
        nonfinite: numerical column -> count of NaN, infinite or empty values (input rows).
        label_repairs: task -> rows whose label a later task's positive sets to 1.
        notes: counts worth recording (orphan items, ...), by name.
    """

    domain: str
    split: str
    relation: str
    in_file_order: bool
    origin: str
    rows: int
    tasks_present: tuple[str, ...]
    nonfinite: dict[str, int] = field(default_factory=dict)
    label_repairs: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    profile: Profile | None = None


class Profile:
    """Distinct integer categories of a split, accumulated batch by batch.

    A reader that streams a split's rows can fill one so that ``taa prepare`` needs no
    further pass over the split for the vocabulary. (Statistics stay with DuckDB: a sum in
    another order would change their last digits.)

    Args:
        categorical: integer categorical fields.
    """

    def __init__(self, categorical: Sequence[str]) -> None:
        self.categorical = tuple(categorical)
        self.distinct: dict[str, list[Any]] = {name: [] for name in self.categorical}

    def add(self, columns: dict[str, Any]) -> None:
        """Add rows: ``columns[name]`` is an int64 ``[R]`` array per categorical field."""
        import numpy as np

        for name in self.categorical:
            values = columns[name]
            if not len(values):
                continue
            low, high = int(values.min()), int(values.max())
            if high - low <= 4 * len(values) + 1024:
                present = np.flatnonzero(np.bincount(values - low, minlength=high - low + 1))
                self.distinct[name].append(present + low)
            else:
                self.distinct[name].append(np.unique(values))
            if len(self.distinct[name]) > 64:  # keep the list short
                self.distinct[name] = [np.unique(np.concatenate(self.distinct[name]))]

    def values(self, name: str) -> list[int]:
        """The distinct values of categorical field ``name``, ascending."""
        import numpy as np

        parts = self.distinct[name]
        return np.unique(np.concatenate(parts)).tolist() if parts else []

    @staticmethod
    def merge(profiles: Sequence[Profile]) -> Profile:
        """One profile of several (the train splits of several domains)."""
        merged = Profile(profiles[0].categorical)
        for profile in profiles:
            for name in merged.categorical:
                merged.distinct[name].extend(profile.distinct[name])
        return merged


class Session:
    """A DuckDB connection with a memory limit, spilling to a scratch folder.

    Args:
        scratch: folder for staged files and DuckDB's spill files (created if missing).
        memory_limit: DuckDB's memory limit, e.g. ``1GB``.
        threads: DuckDB threads; 0 uses every core.
        engine: how readers that have a fast path parse their input: ``arrow`` (PyArrow and
            NumPy, falling back to DuckDB for input it does not handle) or ``duckdb``.
    """

    def __init__(
        self,
        scratch: Path,
        memory_limit: str = "512MB",
        threads: int = 0,
        engine: str = "duckdb",
    ) -> None:
        import duckdb

        if engine not in ENGINES:
            raise ConfigError(f"option --engine got {engine!r}; choose one of {list(ENGINES)}")
        self.engine = engine
        self.scratch = Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "memory_limit": memory_limit,
            "temp_directory": str(self.scratch / "spill"),
            "preserve_insertion_order": True,
        }
        if threads > 0:
            config["threads"] = threads
        try:
            self.connection = duckdb.connect(config=config)
            self.connection.execute("SET enable_progress_bar = false").fetchall()
        except duckdb.Error as error:
            raise ConfigError(
                f"option --memory-limit {memory_limit!r} / --threads {threads}: DuckDB refused "
                f"them ({_first_line(error)}); give a size such as 512MB or 2GB and threads >= 0"
            ) from error
        self._names = itertools.count()

    def unique(self, stem: str) -> str:
        """A name not used before in this session, such as ``stem_3``."""
        return f"{stem}_{next(self._names)}"

    def rows(
        self, sql: str, where: str, parameters: list[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` (with ``$1``... ``parameters``), fetch every row; errors name ``where``."""
        return self._run(sql, where, lambda result: result.fetchall(), parameters)

    def one(self, sql: str, where: str) -> tuple[Any, ...]:
        """Run ``sql`` and return its first row (a ``COPY`` gives its row count)."""
        return self.rows(sql, where)[0]

    def numpy(self, sql: str, where: str) -> dict[str, Any]:
        """Run ``sql`` and fetch its columns as NumPy arrays; nulls become NaN (float32)."""
        import numpy as np

        columns = self._run(sql, where, lambda result: result.fetchnumpy())
        return {
            name: np.ma.filled(column.astype(np.float32), np.nan)
            if isinstance(column, np.ma.MaskedArray)
            else column
            for name, column in columns.items()
        }

    def _run(
        self,
        sql: str,
        where: str,
        fetch: Callable[[Any], Any],
        parameters: list[Any] | None = None,
    ) -> Any:
        import duckdb

        started = time.perf_counter()
        try:
            result = fetch(self.connection.execute(sql, parameters))
            logger.debug("%.2f s: %s: %.200s", time.perf_counter() - started, where, sql)
            return result
        except duckdb.OutOfMemoryException as error:
            raise ConfigError(
                f"{where}: DuckDB ran out of memory ({_first_line(error)}); raise --memory-limit "
                "or free disk space in the scratch folder for spilling"
            ) from error
        except duckdb.Error as error:
            raise DataError(f"{where}: cannot read the data: {_first_line(error)}") from error

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class DomainReader(ABC):
    """Reads one domain's input in one layout and yields a :class:`SplitView` per split."""

    layout: ClassVar[str]

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    @abstractmethod
    def roles(self) -> Roles:
        """The canonical columns this input provides."""

    @abstractmethod
    def load_split(
        self, session: Session, domain: str, split: str, options: Any, *, scoring: bool = False
    ) -> SplitView:
        """Stage and check one split (``train`` or ``test``) and return its view.

        ``options`` is a :class:`taa.data.validate.ValidationOptions`. With ``scoring`` the
        task labels may be missing from the input.
        """


# ---- headers and column lists -------------------------------------------------------------


def read_csv_header(path: Path, origin: str) -> list[str]:
    """The column names in the first line of a CSV file."""
    with open(path, "rb") as stream:
        first = stream.readline()  # only line 1: a bad byte further on is not line 1's
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{origin}: line 1 is not UTF-8 text (byte {first[error.start]:#04x} at offset "
            f"{error.start}); save it as UTF-8"
        ) from error
    header = next(csv.reader([text.rstrip("\r\n")]), None)
    if not header:
        raise DataError(f"{origin}: the file is empty; expected a header line and data rows")
    return [name.strip() for name in header]


def parquet_columns(path: Path, origin: str) -> dict[str, Any]:
    """Column name -> Arrow type of a Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as error:
        raise DataError(
            f"{origin}: not a readable Parquet file ({error}); the file may be truncated: "
            "write it again"
        ) from error
    return {name: schema.field(name).type for name in schema.names}


def file_columns(path: Path, origin: str) -> list[str]:
    """The column names of a CSV (header line) or Parquet file."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return list(parquet_columns(path, origin))
    return read_csv_header(path, origin)


def flat_table(
    path: Path,
    roles: Roles,
    *,
    origin: str | None = None,
    ignore: Sequence[str] = (),
    unexpected: str = "error",
    tasks_required: bool = True,
    text_categories: bool = False,
) -> TableFile:
    """A :class:`TableFile` for a CSV with a header or a Parquet file named by role.

    Args:
        path: the file.
        roles: the canonical columns, named as in the file.
        origin: the name used in messages (default: the path).
        ignore: columns present in the file but not used.
        unexpected: ``error`` refuses other columns; ``ignore`` skips them (scoring).
        tasks_required: a missing task column is an error; otherwise its labels are unknown.
        text_categories: read categorical CSV values as text rather than integer codes.
    """
    from taa.data.validate import check_columns

    origin = origin or str(path)
    found = file_columns(path, origin)
    required = [roles.group_key, *roles.features] + (list(roles.tasks) if tasks_required else [])
    optional = [] if tasks_required else list(roles.tasks)
    check_columns(origin, found, required, optional=optional, ignore=ignore, unexpected=unexpected)
    columns = tuple(
        Column(name, roles.kind(name), name if roles.kind(name) != IGNORED else None)
        for name in found
    )
    return TableFile(path=path, origin=origin, columns=columns, text_categories=text_categories)


# ---- staging -------------------------------------------------------------------------------


def csv_type(column: Column, table: TableFile) -> str:
    """The DuckDB type a CSV column of this kind is parsed as."""
    if column.kind == KEY:
        return "BIGINT"
    if column.kind == CATEGORICAL:
        return "VARCHAR"  # integer codes are checked and cast by :func:`csv_value`
    if column.kind == NUMERICAL:
        return "FLOAT"
    return "DOUBLE" if column.kind == LABEL else "VARCHAR"


_NOT_INTEGER = "taa: not an integer category code"


def csv_value(column: Column, table: TableFile, source: str) -> str:
    """The SQL expression giving a parsed CSV column's staged value.

    An integer category code is parsed as text and cast here, so that a code such as ``1.5``
    is refused rather than rounded (DuckDB's cast rounds): the expression raises a DuckDB
    error holding :data:`_NOT_INTEGER`, the column and the value (see :func:`_code_error`).
    ``1.0`` is the code 1. Other columns pass through.
    """
    name = sql_name(source)
    if column.kind != CATEGORICAL or table.text_categories:
        return name
    as_int, as_double = f"TRY_CAST({name} AS BIGINT)", f"TRY_CAST({name} AS DOUBLE)"
    marker = sql_string(f"{_NOT_INTEGER}\t{column.source}\t")
    # A nonzero digit after the point (without an exponent) is a fraction, even where the
    # double rounds it away (3.000000000000000001, 9007199254740993.5).
    fraction = (
        f"CASE WHEN strpos({name}, '.') > 0 AND NOT regexp_matches({name}, '[eE]') "
        f"THEN regexp_matches({name}, '\\.[0-9]*[1-9]') ELSE false END"
    )
    return (
        f"CASE WHEN {name} IS NULL OR trim({name}) = '' THEN NULL "
        f"WHEN {as_int} IS NULL OR {as_double} IS DISTINCT FROM CAST({as_int} AS DOUBLE) "
        f"OR {fraction} THEN error({marker} || {name}) ELSE {as_int} END"
    )


def _code_error(table: TableFile, error: DataError) -> DataError | None:
    """The message for a non-integer category code found by :func:`csv_value`, or None.

    The value's line is found by reading the CSV again (only on this error path).
    """
    text = str(error)
    if _NOT_INTEGER not in text:
        return None
    source, value = text.split(_NOT_INTEGER, 1)[1].split("\t", 2)[1:3]
    value = value.splitlines()[0] if value else value
    position = next(i for i, column in enumerate(table.columns) if column.source == source)
    line = row = None
    with open(table.path, newline="", encoding="utf-8-sig", errors="replace") as stream:
        reader = csv.reader(stream)
        if table.header:
            next(reader, None)
        for number, fields in enumerate(reader, start=1):
            if len(fields) > position and fields[position] == value:
                line, row = reader.line_num, number
                break
    where = f"line {line}" if line is not None else "a data row"
    row_note = f"data row {row}; " if row is not None else ""
    return DataError(
        f"{table.origin}: {where}, column {source!r}: {value!r} is not an integer category "
        f"code ({row_note}codes are whole numbers and are never rounded): fix the value"
    )


def stage_table(session: Session, table: TableFile) -> StagedTable:
    """Parse ``table`` with fixed types into a Parquet file in the session's scratch folder.

    Raises:
        DataError: a CSV line has the wrong number of columns or a value of the wrong type
            (names file, line, column and value), or a Parquet column has the wrong type.
    """
    target = session.scratch / f"{session.unique('staged')}.parquet"
    if table.is_parquet:
        rows = _stage_parquet(session, table, target)
    else:
        rows = _stage_csv(session, table, target)
    logger.debug("staged %s: %d rows -> %s", table.origin, rows, target)
    return StagedTable(table=table, path=target, rows=rows)


def _stage_csv(session: Session, table: TableFile, target: Path) -> int:
    names = {column.source: f"c{position}" for position, column in enumerate(table.columns)}
    types = ", ".join(
        f"{sql_string(names[column.source])}: {sql_string(csv_type(column, table))}"
        for column in table.columns
    )
    select = ", ".join(
        f"{csv_value(column, table, names[column.source])} AS {sql_name(column.name)}"
        for column in table.kept()
    )
    rejects = session.unique("rejects")
    scan = (
        f"read_csv({sql_string(table.path)}, header = {str(table.header).lower()}, "
        f"columns = {{{types}}}, auto_detect = false, delim = ',', quote = '\"', "
        f"escape = '\"', store_rejects = true, rejects_table = {sql_string(rejects)}, "
        f"rejects_scan = {sql_string(rejects + '_scan')}, rejects_limit = {REJECTS_KEPT})"
    )
    sql = f"COPY (SELECT {select} FROM {scan}) TO {sql_string(target)} ({STAGED_PARQUET})"
    try:
        rows = int(session.one(sql, table.origin)[0])
    except DataError as error:
        raise _code_error(table, error) or error from error.__cause__
    errors = session.rows(
        "SELECT line, column_idx, error_type, csv_line, error_message "
        f"FROM {sql_name(rejects)} ORDER BY line LIMIT 1",
        table.origin,
    )
    if errors:
        raise _reject_error(table, *errors[0])
    return rows


def _reject_error(
    table: TableFile, line: int, column_index: int, kind: str, text: str, message: str
) -> DataError:
    expected = len(table.columns)
    fields = next(csv.reader([text]), []) if text is not None else []
    if kind in ("TOO MANY COLUMNS", "MISSING COLUMNS"):
        return DataError(
            f"{table.origin}: line {line}: expected {expected} columns, got {len(fields)}; "
            f"every row needs {expected} comma-separated values: fix or remove the line"
        )
    if kind in ("INVALID UNICODE", "INVALID ENCODING") or "nvalid unicode" in (message or ""):
        return DataError(
            f"{table.origin}: line {line} is not UTF-8 text (DuckDB: {message}); save the "
            "file as UTF-8"
        )
    if kind == "CAST" and 1 <= column_index <= expected:
        column = table.columns[column_index - 1]
        value = fields[column_index - 1] if column_index <= len(fields) else text
        return DataError(
            f"{table.origin}: line {line}, column {column.source!r}: {value!r} is not "
            f"{_EXPECTED.get(column.kind, 'valid')}; fix the value or declare the column "
            "differently"
        )
    return DataError(f"{table.origin}: line {line}: cannot parse the row ({message}); fix it")


_ARROW_ALLOWED = {
    KEY: "integer",
    CATEGORICAL: "integer or string",
    NUMERICAL: "numeric",
    LABEL: "numeric or boolean",
}


def _parquet_cast(kind: str, arrow_type: Any) -> str | None:
    """The DuckDB type a Parquet column of ``arrow_type`` is read as, or None if not allowed."""
    import pyarrow.types as pat

    if pat.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    is_integer = pat.is_integer(arrow_type)
    is_text = pat.is_string(arrow_type) or pat.is_large_string(arrow_type)
    numeric = is_integer or pat.is_floating(arrow_type) or pat.is_decimal(arrow_type)
    if kind == KEY:
        return "BIGINT" if is_integer else None
    if kind == CATEGORICAL:
        return "BIGINT" if is_integer else ("VARCHAR" if is_text else None)
    if kind == NUMERICAL:
        return "FLOAT" if numeric else None
    if kind == LABEL:
        return "DOUBLE" if numeric or pat.is_boolean(arrow_type) else None
    return None


def _stage_parquet(session: Session, table: TableFile, target: Path) -> int:
    types = parquet_columns(table.path, table.origin)
    parts = []
    for column in table.kept():
        cast = _parquet_cast(column.kind, types[column.source])
        if cast is None:
            raise DataError(
                f"{table.origin}: column {column.source!r} has type {types[column.source]}; "
                f"{column.kind} columns must be {_ARROW_ALLOWED[column.kind]}: convert the "
                "column (for example with pandas .astype) and write the file again"
            )
        parts.append(f"CAST({sql_name(column.source)} AS {cast}) AS {sql_name(column.name)}")
    sql = (
        f"COPY (SELECT {', '.join(parts)} FROM read_parquet({sql_string(table.path)})) "
        f"TO {sql_string(target)} ({STAGED_PARQUET})"
    )
    return int(session.one(sql, table.origin)[0])

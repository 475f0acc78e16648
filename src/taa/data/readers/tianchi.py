"""The raw Tianchi download of the AliExpress data (dataset 74690), one country at a time.

A country comes as ``aliexpress_XX_datasets.zip`` holding four inner zips, each holding one
headerless CSV::

    xx_user_train.zip -> xx_user_train.csv     33 columns: 1 page id, 2..33 page features
    xx_user_test.zip  -> xx_user_test.csv
    xx_item_train.zip -> xx_item_train.csv     49 columns: 1 page id, 2..48 item features,
    xx_item_test.zip  -> xx_item_test.csv                  49 label (0, 1 click, 2 purchase)

The outer zip, a folder holding the four inner zips, or a folder holding the four CSVs are
all accepted; a name only has to end in ``user_train.csv`` (``.zip``) and so on. Items are
joined to their page on the page id (an inner join), and columns are mapped as the
community does (1-based column numbers):

* ``categorical_1..16``: user 2-8, user 32-33, item 19, 34, 35, 36, 40, 41, 42;
* ``numerical_1..63``: user 9-31, then item 2-48 without the categorical ones;
* ``click`` = label >= 1, ``conversion`` = label == 2, ``search_id`` = page id.

Zips are extracted by stream copy into the scratch folder and parsed by DuckDB. With the
``duckdb`` engine both files are staged as Parquet and joined (and sorted back into item
order) there, so memory stays bounded whatever the size of the download. With the ``arrow``
engine (the default) the page file is held as NumPy arrays sorted by page id and the items
stream through in Arrow batches, checked, joined by binary search and staged already in
item order; a split it does not handle (see :func:`_arrow_split`) goes to the ``duckdb``
engine, so both give the same prepared rows and the same messages.
"""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taa.data.readers.common import (
    CATEGORICAL,
    KEY,
    LABEL,
    NUMERICAL,
    ROW_COLUMN,
    Column,
    DomainReader,
    Profile,
    Roles,
    Session,
    SplitView,
    StagedTable,
    TableFile,
    csv_type,
    csv_value,
    sql_name,
    sql_string,
    stage_table,
)
from taa.data.readers.processed import PROCESSED_ROLES
from taa.data.validate import ValidationOptions, check_orphans, check_table, check_unique_keys
from taa.errors import DataError

logger = logging.getLogger(__name__)

USER_COLUMNS = 33
ITEM_COLUMNS = 49
USER_CATEGORICAL = (2, 3, 4, 5, 6, 7, 8, 32, 33)
USER_NUMERICAL = tuple(range(9, 32))
ITEM_CATEGORICAL = (19, 34, 35, 36, 40, 41, 42)
ITEM_NUMERICAL = tuple(column for column in range(2, 49) if column not in ITEM_CATEGORICAL)
RAW_LABEL = "label"
PARTS = ("user_train", "user_test", "item_train", "item_test")
COPY_CHUNK = 8 << 20
_END_RECORD_SIGNATURE = b"PK\x05\x06"
_END_RECORD_SIZE = 22


def _columns(
    count: int, categorical: tuple[int, ...], numerical: tuple[int, ...], offset: tuple[int, int]
) -> tuple[Column, ...]:
    """Columns of a raw file: 1-based number -> kind and canonical name."""
    categorical_names = {
        number: f"categorical_{offset[0] + position}" for position, number in enumerate(categorical)
    }
    numerical_names = {
        number: f"numerical_{offset[1] + position}" for position, number in enumerate(numerical)
    }
    columns = []
    for number in range(1, count + 1):
        source = f"column {number}"
        if number == 1:
            columns.append(Column(source, KEY, "search_id"))
        elif number in categorical_names:
            columns.append(Column(source, CATEGORICAL, categorical_names[number]))
        elif number in numerical_names:
            columns.append(Column(source, NUMERICAL, numerical_names[number]))
        else:
            columns.append(Column(source, LABEL, RAW_LABEL))
    return tuple(columns)


USER_LAYOUT = _columns(USER_COLUMNS, USER_CATEGORICAL, USER_NUMERICAL, (1, 1))
ITEM_LAYOUT = _columns(
    ITEM_COLUMNS,
    ITEM_CATEGORICAL,
    ITEM_NUMERICAL,
    (len(USER_CATEGORICAL) + 1, len(USER_NUMERICAL) + 1),
)


@dataclass(frozen=True)
class RawPart:
    """Where one of the four CSVs is: a CSV file, an inner zip, or a member of the outer zip.

    Attributes:
        part: ``user_train``, ``user_test``, ``item_train`` or ``item_test``.
        path: the CSV or zip file on disk (the outer zip for ``member``).
        member: the inner zip's (or CSV's) name inside the outer zip, or ``None``.
    """

    part: str
    path: Path
    member: str | None = None


def _ends_with(name: str, part: str, suffix: str) -> bool:
    base = name.replace("\\", "/").rsplit("/", 1)[-1].lower()
    return base.endswith(part + suffix) and not base.startswith(".")


def _pick(candidates: list[str], part: str, where: str) -> str | None:
    for suffix in (".csv", ".zip"):
        found = [name for name in candidates if _ends_with(name, part, suffix)]
        if len(found) > 1:
            raise DataError(
                f"{where}: several files end in {part}{suffix}: {found}; keep one per country"
            )
        if found:
            return found[0]
    return None


def _open_zip(path: Path, origin: str) -> zipfile.ZipFile:
    """Open a zip archive, refusing one whose end record is not at the end of the file.

    A truncated outer zip can still look valid to :mod:`zipfile`: it finds the end record of
    a stored inner zip and reads that one instead, so the record's position is checked too.
    """
    try:
        archive = zipfile.ZipFile(path)
        with open(path, "rb") as stream:
            stream.seek(-_END_RECORD_SIZE - len(archive.comment), 2)
            if stream.read(4) != _END_RECORD_SIGNATURE:
                archive.close()
                raise zipfile.BadZipFile("its end record is not at the end of the file")
        return archive
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise DataError(
            f"{origin}: not a readable zip archive ({error}); the download may be truncated "
            "or corrupt: download it again"
        ) from error


def _members(archive: zipfile.ZipFile) -> list[str]:
    return [
        info.filename
        for info in archive.infolist()
        if not info.is_dir() and "__MACOSX" not in info.filename
    ]


def locate_parts(path: Path) -> dict[str, RawPart]:
    """Find the four raw files in an outer zip or a folder.

    Raises:
        DataError: a file is missing (named) or the outer zip is unreadable.
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        with _open_zip(path, str(path)) as archive:
            names = _members(archive)
        found = {part: _pick(names, part, str(path)) for part in PARTS}
        parts = {part: RawPart(part, path, name) for part, name in found.items() if name}
    elif path.is_dir():
        files = sorted(item.name for item in path.iterdir() if item.is_file())
        found = {part: _pick(files, part, str(path)) for part in PARTS}
        if not any(found.values()):
            outer = [name for name in files if name.lower().endswith("_datasets.zip")]
            if len(outer) == 1:
                return locate_parts(path / outer[0])
        parts = {part: RawPart(part, path / name) for part, name in found.items() if name}
    else:
        raise DataError(
            f"{path}: not a zip file or a folder; give aliexpress_XX_datasets.zip or the folder "
            "holding xx_user_train.zip (or .csv) and the three other files"
        )
    return parts


def _missing_part(path: Path, part: str, parts: dict[str, RawPart]) -> DataError:
    prefix = _country_prefix(parts)
    return DataError(
        f"{path}: missing {prefix}{part}.zip (or {prefix}{part}.csv); the raw layout needs "
        f"{', '.join(prefix + name for name in PARTS)}"
    )


def _country_prefix(parts: dict[str, RawPart]) -> str:
    for raw in parts.values():
        name = (raw.member or raw.path.name).replace("\\", "/").rsplit("/", 1)[-1]
        match = re.match(r"(.*?)(user|item)_(train|test)\.(csv|zip)$", name, re.IGNORECASE)
        if match:
            return match.group(1)
    return "xx_"


def _copy(archive: zipfile.ZipFile, member: str, target: Path, origin: str) -> None:
    """Stream-copy one archive member to ``target`` (bounded memory)."""
    try:
        with archive.open(member) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, COPY_CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        target.unlink(missing_ok=True)
        raise DataError(
            f"{origin}: the archive is corrupt or truncated ({error}); download it again"
        ) from error


def _extract_csv(archive_path: Path, part: str, origin: str, scratch: Path) -> tuple[Path, str]:
    """Stream the CSV of ``part`` out of an inner zip into ``scratch``."""
    with _open_zip(archive_path, origin) as archive:
        names = _members(archive)
        found = [name for name in names if _ends_with(name, part, ".csv")]
        if len(found) > 1:
            raise DataError(
                f"{origin}: several members end in {part}.csv: {found}; the inner zip should "
                "hold one headerless CSV"
            )
        member = found[0] if found else None
        if member is None:
            raise DataError(
                f"{origin}: no member ending in {part}.csv (it holds {names}); the inner zip "
                "should hold one headerless CSV"
            )
        target = scratch / f"{part}.csv"
        member_origin = f"{origin}:{member}"
        _copy(archive, member, target, member_origin)
    return target, member_origin


def materialize(raw: RawPart, scratch: Path) -> tuple[Path, str, bool]:
    """The CSV of ``raw`` on disk: ``(path, origin for messages, is a temporary copy)``."""
    if raw.member is None:
        if raw.path.suffix.lower() == ".csv":
            return raw.path, str(raw.path), False
        target, origin = _extract_csv(raw.path, raw.part, str(raw.path), scratch)
        return target, origin, True
    outer_origin = f"{raw.path}:{raw.member}"
    with _open_zip(raw.path, str(raw.path)) as outer:
        suffix = ".csv" if raw.member.lower().endswith(".csv") else ".zip"
        copied = scratch / f"{raw.part}{suffix}.part"
        _copy(outer, raw.member, copied, outer_origin)
    if suffix == ".csv":
        return copied, outer_origin, True
    try:
        target, origin = _extract_csv(copied, raw.part, outer_origin, scratch)
    finally:
        copied.unlink(missing_ok=True)
    return target, origin, True


class TianchiReader(DomainReader):
    """The raw Tianchi download of one country (see the module docstring)."""

    layout = "tianchi"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.parts = locate_parts(self.path)

    @property
    def roles(self) -> Roles:
        return PROCESSED_ROLES

    def _stage(self, session: Session, part: str, layout: tuple[Column, ...]) -> StagedTable:
        raw = self.parts.get(part)
        if raw is None:
            raise _missing_part(self.path, part, self.parts)
        csv_path, origin, temporary = materialize(raw, session.scratch)
        table = TableFile(
            path=csv_path, origin=origin, columns=layout, header=False, label_values=(0, 1, 2)
        )
        try:
            return stage_table(session, table)
        finally:
            if temporary:
                csv_path.unlink(missing_ok=True)

    def load_split(
        self,
        session: Session,
        domain: str,
        split: str,
        options: ValidationOptions,
        *,
        scoring: bool = False,
    ) -> SplitView:
        for part in (f"user_{split}", f"item_{split}"):
            if part not in self.parts:
                raise _missing_part(self.path, part, self.parts)
        if session.engine == "arrow":
            try:
                return _arrow_split(self, session, domain, split, options)
            except Exception as error:  # the DuckDB engine reports or reads it
                if isinstance(error, _FallbackError):
                    reason = str(error)
                else:  # one short line; the details (DuckDB's are several lines) at DEBUG
                    reason = f"{type(error).__name__}, details at -vv"
                    logger.debug("%s/%s: arrow engine error: %s", domain, split, error)
                logger.info(
                    "%s/%s: read by the duckdb engine (the arrow engine stopped: %s)",
                    domain,
                    split,
                    reason,
                )
        users = self._stage(session, f"user_{split}", USER_LAYOUT)
        items = self._stage(session, f"item_{split}", ITEM_LAYOUT)
        checks = [
            check_table(session, staged, domain=domain, split=split, options=options)
            for staged in (users, items)
        ]
        check_unique_keys(session, users, "search_id", "page id")
        orphans = check_orphans(session, items, users, "search_id", options)
        rows = items.rows - orphans
        if rows == 0:
            raise DataError(
                f"{items.table.origin}: no item has its page in {users.table.origin}; the "
                f"{split} split of domain {domain!r} would be empty: check that both files "
                "come from the same country and split"
            )
        return SplitView(
            domain=domain,
            split=split,
            relation=_join_relation(users, items),
            in_file_order=False,
            origin=items.table.origin,
            rows=rows,
            tasks_present=PROCESSED_ROLES.tasks,
            nonfinite={**checks[0].nonfinite, **checks[1].nonfinite},
            notes={"orphan_items": orphans} if orphans else {},
        )


def _join_relation(users: StagedTable, items: StagedTable) -> str:
    """Items joined to their page, in canonical columns; ``__row`` is the item's data row."""
    side = {column.name: "u" for column in USER_LAYOUT if column.name}
    side.update({column.name: "i" for column in ITEM_LAYOUT if column.name})
    features = [f"{side[name]}.{sql_name(name)}" for name in PROCESSED_ROLES.features]
    label = sql_name(RAW_LABEL)
    return (
        f"SELECT i.search_id AS search_id, {', '.join(features)}, "
        f"CAST(i.{label} >= 1 AS TINYINT) AS click, CAST(i.{label} = 2 AS TINYINT) AS conversion, "
        f"i.file_row_number + 1 AS __row FROM {items.scan()} i "
        f"JOIN read_parquet({sql_string(users.path)}) u ON i.search_id = u.search_id"
    )


def _labels_relation(source: str) -> str:
    """The joined rows staged by the arrow engine, with the task labels made from ``label``."""
    names = ", ".join(sql_name(name) for name in ("search_id", *PROCESSED_ROLES.features))
    label = sql_name(RAW_LABEL)
    return (
        f"SELECT {names}, CAST({label} >= 1 AS TINYINT) AS click, "
        f"CAST({label} = 2 AS TINYINT) AS conversion, {ROW_COLUMN} FROM {source}"
    )


# ---- the arrow engine: streaming parse, in-memory page table, join in file order ----------

# The page (user) file is held in memory by the arrow engine; above this many bytes of CSV
# text (about its size in memory once parsed) the split is read by the DuckDB engine instead.
ARROW_USER_BYTES = 512 << 20
ARROW_BATCH_ROWS = 1 << 18


class _FallbackError(Exception):
    """The arrow engine does not handle this input; the DuckDB engine reads it instead."""


@contextmanager
def _parsed(
    session: Session, raw: RawPart, layout: tuple[Column, ...], bound: int | None = None
) -> Iterator[tuple[Any, str]]:
    """Record batches of one raw CSV parsed by DuckDB with fixed types, in file order.

    Yields ``(batches, origin for messages)``. The CSV is extracted into the scratch folder
    (and removed afterwards) as the DuckDB engine does; above ``bound`` bytes of CSV text
    the arrow engine gives up (see :data:`ARROW_USER_BYTES`).
    """
    csv_path, origin, temporary = materialize(raw, session.scratch)
    try:
        size = csv_path.stat().st_size
        if bound is not None and size > bound:
            raise _FallbackError(f"page file of {size} bytes above {bound}")
        table = TableFile(path=csv_path, origin=origin, columns=layout, header=False)
        types = ", ".join(
            f"{sql_string(f'c{position}')}: {sql_string(csv_type(column, table))}"
            for position, column in enumerate(layout)
        )
        values = ", ".join(
            f"{csv_value(column, table, f'c{position}')} AS {sql_name(f'c{position}')}"
            for position, column in enumerate(layout)
        )
        sql = (
            f"SELECT {values} FROM read_csv({sql_string(csv_path)}, header = false, "
            f"columns = {{{types}}}, auto_detect = false, delim = ',', quote = '\"', "
            "escape = '\"')"
        )
        cursor = session.connection.cursor()  # its own result, closed whatever happens
        try:
            yield cursor.sql(sql).to_arrow_reader(ARROW_BATCH_ROWS), origin
        finally:
            cursor.close()
    finally:
        if temporary:
            csv_path.unlink(missing_ok=True)


def _clean(batch: object, layout: tuple[Column, ...]) -> dict[str, object]:
    """Kept columns of a batch as NumPy arrays; raise :class:`_FallbackError` on anything a check
    of the DuckDB engine would report (a missing value, a non-finite number, a bad label)."""
    import numpy as np

    columns: dict[str, object] = {}
    for position, column in enumerate(layout):
        array = batch.column(position)  # type: ignore[attr-defined]
        if array.null_count:
            raise _FallbackError(f"empty value in {column.source}")
        values = array.to_numpy(zero_copy_only=False)
        if column.kind == NUMERICAL and not np.isfinite(values).all():
            raise _FallbackError(f"non-finite value in {column.source}")
        if column.kind == LABEL and not np.isin(values, (0.0, 1.0, 2.0)).all():
            raise _FallbackError(f"label outside 0, 1, 2 in {column.source}")
        columns[column.name or column.source] = values
    return columns


def _pages(session: Session, raw: RawPart) -> tuple[dict[str, object], str]:
    """The page table sorted by page id, as NumPy arrays, and the file's origin."""
    import numpy as np

    with _parsed(session, raw, USER_LAYOUT, ARROW_USER_BYTES) as (batches, origin):
        parts = [_clean(batch, USER_LAYOUT) for batch in batches]
    if not parts or not sum(len(part["search_id"]) for part in parts):  # type: ignore[arg-type]
        raise _FallbackError("no page rows")
    # One column at a time, so the table is held about once (plus one column) at any moment.
    pages: dict[str, object] = {}
    for name in list(parts[0]):
        pages[name] = np.concatenate([part.pop(name) for part in parts])
    order = np.argsort(pages["search_id"], kind="stable")  # type: ignore[arg-type]
    for name in pages:
        pages[name] = pages[name][order]  # type: ignore[index]
    keys = pages["search_id"]
    if len(keys) > 1 and not (keys[1:] != keys[:-1]).all():  # type: ignore[index]
        raise _FallbackError("repeated page id")
    return pages, origin


def _arrow_split(
    reader: TianchiReader, session: Session, domain: str, split: str, options: ValidationOptions
) -> SplitView:
    """Stage the joined split in file order with the arrow engine (see the module docstring).

    Memory: the page table (``[P]`` arrays, about 170 bytes per page) and two item batches
    of :data:`ARROW_BATCH_ROWS` rows.

    Raises:
        _FallbackError: the page file is above :data:`ARROW_USER_BYTES`, or the split holds
            something a check of the DuckDB engine reports or repairs (a missing or
            non-finite value, a label outside 0-2, a repeated page id, an orphan item
            under ``--orphan-items fail``, no rows); DuckDB errors (a value it cannot parse)
            pass through. The caller then reads the split with the DuckDB engine.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    pages, pages_origin = _pages(session, reader.parts[f"user_{split}"])
    keys = pages["search_id"]
    side = {column.name: "user" for column in USER_LAYOUT if column.name}
    side.update({column.name: "item" for column in ITEM_LAYOUT if column.name})
    target = session.scratch / f"{session.unique('joined')}.parquet"
    # Every value is checked present: the columns are declared required, as DuckDB's
    # join would declare them (the prepared files then carry the same schema).
    schema = pa.schema(
        [pa.field("search_id", pa.int64(), nullable=False)]
        + [pa.field(name, pa.int64(), nullable=False) for name in PROCESSED_ROLES.categorical]
        + [pa.field(name, pa.float32(), nullable=False) for name in PROCESSED_ROLES.numerical]
        + [pa.field(RAW_LABEL, pa.float64(), nullable=False)]
        + [pa.field(ROW_COLUMN, pa.int64(), nullable=False)]
    )
    seen = orphans = rows = 0
    names = ("search_id", *PROCESSED_ROLES.features)
    profile = Profile(PROCESSED_ROLES.categorical) if split == "train" else None
    try:
        with (
            _parsed(session, reader.parts[f"item_{split}"], ITEM_LAYOUT) as (batches, origin),
            pq.ParquetWriter(
                target, schema, compression="none", use_dictionary=False, write_statistics=True
            ) as writer,
        ):
            for batch in batches:
                items = _clean(batch, ITEM_LAYOUT)
                ids = items["search_id"]
                count = len(ids)  # type: ignore[arg-type]
                position = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
                found = keys[position] == ids  # type: ignore[index]
                row = np.arange(seen + 1, seen + count + 1, dtype=np.int64)
                seen += count
                if not found.all():
                    if options.orphan_items == "fail":
                        raise _FallbackError("items without a page (--orphan-items fail)")
                    orphans += int(count - found.sum())
                    position, row = position[found], row[found]
                    items = {
                        name: values[found]  # type: ignore[index]
                        for name, values in items.items()
                    }
                label = items[RAW_LABEL]
                arrays = [items["search_id"]]
                for name in PROCESSED_ROLES.features:
                    from_user = side[name] == "user"
                    arrays.append(
                        pages[name][position] if from_user else items[name]  # type: ignore[index]
                    )
                arrays += [label, row]
                rows += len(row)
                if profile is not None:
                    profile.add(dict(zip(names, arrays, strict=False)))
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if seen == 0 or rows == 0:
        target.unlink(missing_ok=True)
        raise _FallbackError("no item rows, or none joined")
    if orphans:
        logger.warning(
            "%s: %d items have no page in %s and are left out (--orphan-items drop)",
            origin,
            orphans,
            pages_origin,
        )
    return SplitView(
        domain=domain,
        split=split,
        relation=_labels_relation(f"read_parquet({sql_string(target)})"),
        in_file_order=True,
        origin=origin,
        rows=rows,
        tasks_present=PROCESSED_ROLES.tasks,
        nonfinite={},
        notes={"orphan_items": orphans} if orphans else {},
        profile=profile,
    )

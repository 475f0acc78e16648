"""The processed AliExpress layout: ``train.csv`` and ``test.csv`` with 82 named columns.

This is the layout the multi-task recommendation community shares (a folder such as
``AliExpress_NL/``)::

    search_id, categorical_1..16, numerical_1..63, click, conversion

``search_id`` is the result page (the group key), the categorical fields are integer codes,
the numerical fields numbers, and ``click`` and ``conversion`` 0/1 labels. The same columns
in ``train.parquet`` / ``test.parquet`` are read too.
"""

from __future__ import annotations

from pathlib import Path

from taa.data.readers.common import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    DomainReader,
    Roles,
    Session,
    SplitView,
    StagedTable,
    TableFile,
    flat_table,
    sql_name,
    stage_table,
)
from taa.data.validate import ValidationOptions, check_table
from taa.errors import DataError

CATEGORICAL_FIELDS = 16
NUMERICAL_FIELDS = 63
PROCESSED_ROLES = Roles(
    group_key="search_id",
    categorical=tuple(f"categorical_{index}" for index in range(1, CATEGORICAL_FIELDS + 1)),
    numerical=tuple(f"numerical_{index}" for index in range(1, NUMERICAL_FIELDS + 1)),
    tasks=("click", "conversion"),
)
SPLITS = ("train", "test")


def split_file(folder: Path, split: str) -> Path | None:
    """``folder/<split>.csv`` or ``folder/<split>.parquet``, whichever exists (CSV first)."""
    for suffix in CSV_SUFFIXES + PARQUET_SUFFIXES:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def is_processed_folder(path: Path) -> bool:
    """A folder holding ``train`` and ``test`` files (CSV or Parquet)."""
    return path.is_dir() and all(split_file(path, split) for split in SPLITS)


def view_of_table(
    session: Session,
    staged: StagedTable,
    roles: Roles,
    *,
    domain: str,
    split: str,
    options: ValidationOptions,
) -> SplitView:
    """Check a staged single-file split and wrap it as a :class:`SplitView` (file order)."""
    present = tuple(task for task in roles.tasks if task in {c.name for c in staged.table.kept()})
    check = check_table(
        session,
        staged,
        domain=domain,
        split=split,
        options=options,
        chain=present if present == roles.tasks else (),
    )
    columns = [sql_name(name) for name in (roles.group_key, *roles.features, *present)]
    columns += [f"NULL::TINYINT AS {sql_name(task)}" for task in roles.tasks if task not in present]
    relation = f"SELECT {', '.join(columns)}, file_row_number + 1 AS __row FROM {staged.scan()}"
    return SplitView(
        domain=domain,
        split=split,
        relation=relation,
        in_file_order=True,
        origin=staged.table.origin,
        rows=staged.rows,
        tasks_present=present,
        nonfinite=check.nonfinite,
        label_repairs=check.label_repairs,
    )


def load_single_table(
    session: Session,
    table: TableFile,
    roles: Roles,
    *,
    domain: str,
    split: str,
    options: ValidationOptions,
) -> SplitView:
    """Stage, check and view one table file holding a whole split."""
    staged = stage_table(session, table)
    return view_of_table(session, staged, roles, domain=domain, split=split, options=options)


class ProcessedReader(DomainReader):
    """A folder with ``train`` and ``test`` files (CSV with a header, or Parquet), 82 columns.

    Example:
        >>> reader = ProcessedReader(Path("AliExpress_NL"))
        >>> reader.roles.tasks
        ('click', 'conversion')
    """

    layout = "processed"

    @property
    def roles(self) -> Roles:
        return PROCESSED_ROLES

    def file(self, split: str) -> Path:
        """The file holding ``split``."""
        found = split_file(self.path, split)
        if found is None:
            raise DataError(
                f"{self.path}: no {split}.csv or {split}.parquet; a processed folder holds "
                "train.csv and test.csv (82 columns: search_id, categorical_1..16, "
                "numerical_1..63, click, conversion)"
            )
        return found

    def load_split(
        self,
        session: Session,
        domain: str,
        split: str,
        options: ValidationOptions,
        *,
        scoring: bool = False,
    ) -> SplitView:
        table = flat_table(self.file(split), self.roles, tasks_required=not scoring)
        return load_single_table(
            session, table, self.roles, domain=domain, split=split, options=options
        )

"""Checks of input data, each failing with a :class:`DataError` that names file, row and column.

Rules (docs/data-format.md lists them with their options):

* columns: every declared column present, no undeclared one, no name twice;
* roles: the group key and the labels are never features, no column has two roles;
* values: group keys present; labels in the allowed set (0/1; 0/1/2 for the raw Tianchi
  label); numerical values finite (``--nan fail`` refuses NaN, infinity and empty cells,
  ``--nan impute`` replaces them by the training mean with a :class:`DataRepairWarning`);
  a later task never positive where an earlier one is 0 (a conversion without a click:
  ``--conversion-without-click fail``, ``repair`` sets the earlier label to 1, ``keep``
  leaves the row as it is);
* splits: none empty; raw page ids unique in the user file; items whose page is missing
  are dropped and counted (``--orphan-items drop``) or refused (``fail``).

Values are checked on staged Parquet copies of the input (see
:mod:`taa.data.readers.common`): one aggregate query per file counts every rule at once and
finds the first offending data row, so a clean file costs one columnar pass.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taa.errors import ConfigError, DataError, DataRepairWarning

if TYPE_CHECKING:
    from taa.data.readers.common import Roles, Session, StagedTable

logger = logging.getLogger(__name__)

# The domain name ``taa predict`` reads its input under; messages name the file instead.
SCORING_DOMAIN = "input"

NAN_CHOICES = ("fail", "impute")
CONVERSION_CHOICES = ("fail", "repair", "keep")
ORPHAN_CHOICES = ("drop", "fail")


@dataclass(frozen=True)
class ValidationOptions:
    """What to do with data that breaks a rule but can be repaired.

    Args:
        nan: ``fail`` on NaN, infinite or empty numerical values; ``impute`` replaces them
            with the training mean of the field.
        conversion_without_click: ``fail`` on a later task's positive where an earlier task
            is 0; ``repair`` sets the earlier label to 1; ``keep`` leaves the labels.
        orphan_items: raw Tianchi items whose page is not in the user file: ``drop`` them
            (counted and logged) or ``fail``.
    """

    nan: str = "fail"
    conversion_without_click: str = "fail"
    orphan_items: str = "drop"

    def __post_init__(self) -> None:
        allowed = {
            "nan": NAN_CHOICES,
            "conversion_without_click": CONVERSION_CHOICES,
            "orphan_items": ORPHAN_CHOICES,
        }
        for name, choices in allowed.items():
            value = getattr(self, name)
            if value not in choices:
                option = "--" + name.replace("_", "-")
                raise ConfigError(f"option {option} got {value!r}; choose one of {list(choices)}")


def check_columns(
    origin: str,
    found: Sequence[str],
    required: Sequence[str],
    *,
    optional: Sequence[str] = (),
    ignore: Sequence[str] = (),
    unexpected: str = "error",
) -> None:
    """Refuse a file whose columns are not the declared ones.

    Raises:
        DataError: a column name appears twice, a required column is missing, or (with
            ``unexpected="error"``) the file has a column nobody declared.
    """
    repeated = sorted(name for name, count in Counter(found).items() if count > 1)
    if repeated:
        raise DataError(f"{origin}: column names {repeated} appear more than once; rename them")
    missing = [name for name in required if name not in found]
    if missing:
        raise DataError(
            f"{origin}: missing columns {_short(missing)} ({len(missing)} of {len(required)} "
            f"required); the file has {_short(list(found))}"
        )
    known = set(required) | set(optional) | set(ignore)
    extra = [name for name in found if name not in known]
    if extra and unexpected == "error":
        raise DataError(
            f"{origin}: unexpected columns {_short(extra)}; declare them (or list them under "
            "`ignore` in a schema file) or remove them"
        )
    if extra:
        logger.info("%s: ignoring columns %s", origin, _short(extra))


def _short(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


def check_roles(origin: str, roles: Roles, ignore: Sequence[str] = ()) -> None:
    """Refuse a role declaration that would leak labels or keys into the features.

    Raises:
        DataError: the group key or a label is declared as a feature, a column has two
            roles or is declared twice, or there is no feature or no task.
    """
    features = list(roles.features)
    leaked = [name for name in (roles.group_key, *roles.tasks) if name in features]
    if leaked:
        raise DataError(
            f"{origin}: {_short(leaked)} declared as features, but the group key and the task "
            "labels can never be features (a model would see the answer); remove them from "
            "`categorical` / `numerical`"
        )
    declared = [roles.group_key, *features, *roles.tasks, *ignore]
    twice = sorted(name for name, count in Counter(declared).items() if count > 1)
    if twice:
        raise DataError(
            f"{origin}: columns {twice} are declared more than once; give each one role"
        )
    if not features:
        raise DataError(f"{origin}: no feature column declared; list `categorical` or `numerical`")
    if not roles.tasks:
        raise DataError(f"{origin}: no task declared; list the 0/1 label columns under `tasks`")


@dataclass
class TableCheck:
    """What the value checks of one staged table found (input rows)."""

    rows: int
    nonfinite: dict[str, int] = field(default_factory=dict)
    label_repairs: dict[str, int] = field(default_factory=dict)


def _value(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return repr(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def check_table(
    session: Session,
    staged: StagedTable,
    *,
    domain: str,
    split: str,
    options: ValidationOptions,
    chain: Sequence[str] = (),
) -> TableCheck:
    """Check the values of a staged table and return its counts.

    Args:
        session: the DuckDB session holding the staged file.
        staged: the table to check; its columns' kinds decide the rules.
        domain, split: for messages.
        options: how to treat NaN values and conversions without a click.
        chain: task columns in funnel order whose positives must nest (empty: no rule).

    Raises:
        DataError: an empty table, a missing group key, a label outside the allowed set, a
            non-finite number (``nan="fail"``) or a broken label chain
            (``conversion_without_click="fail"``), naming the first data row.
    """
    from taa.data.readers.common import KEY, LABEL, NUMERICAL, sql_name

    table = staged.table
    if staged.rows == 0:
        if domain == SCORING_DOMAIN:
            after = "after its header" if table.header else "(the file has no header)"
            raise DataError(
                f"{table.origin}: no data rows; the file to score must hold at least one row "
                f"{after}"
            )
        raise DataError(
            f"{table.origin}: no data rows; the {split} split of domain {domain!r} must hold at "
            "least one row"
        )
    values = ", ".join(str(value) for value in table.label_values)
    rules: list[tuple[str, str, str]] = []  # (kind, column, SQL condition of a bad row)
    for column in table.kept():
        name = sql_name(column.name)
        if column.kind == KEY:
            rules.append(("key", column.name, f"{name} IS NULL"))
        elif column.kind == LABEL:
            rules.append(("label", column.name, f"{name} IS NULL OR {name} NOT IN ({values})"))
        elif column.kind == NUMERICAL:
            rules.append(("nan", column.name, f"NOT coalesce(isfinite({name}), false)"))
    for position, earlier in enumerate(chain[:-1]):
        later = " OR ".join(f"{sql_name(task)} = 1" for task in chain[position + 1 :])
        rules.append(("chain", earlier, f"{sql_name(earlier)} = 0 AND ({later})"))

    # One pass counts every rule (CASE, not FILTER: DuckDB runs many FILTERs far slower);
    # the first offending row is looked up only for a rule that fails.
    counts = session.one(
        f"SELECT count(*), {', '.join(f'count(CASE WHEN {rule[2]} THEN 1 END)' for rule in rules)} "
        f"FROM {staged.scan()}",
        table.origin,
    )[1:]
    result = TableCheck(rows=staged.rows)
    for (kind, column, condition), count in zip(rules, counts, strict=True):
        if count:

            def first(column: str = column, condition: str = condition) -> tuple[int, Any]:
                row, value = session.one(
                    f"SELECT min(file_row_number), arg_min({sql_name(column)}, file_row_number) "
                    f"FROM {staged.scan()} WHERE {condition}",
                    table.origin,
                )
                return int(row) + 1, value

            _apply_rule(kind, column, int(count), first, staged, chain, options, result)
    _warn_repairs(table.origin, domain, split, result, options)
    return result


def _apply_rule(
    kind: str,
    column: str,
    count: int,
    first: Callable[[], tuple[int, Any]],
    staged: StagedTable,
    chain: Sequence[str],
    options: ValidationOptions,
    result: TableCheck,
) -> None:
    """Raise for a rule that fails, or record what the options repair or keep."""
    table = staged.table
    source = table.column_named(column).source
    if kind == "key":
        row, _ = first()
        raise DataError(
            f"{table.origin}: data row {row}, column {source!r}: the group key is empty ({count} "
            "such rows); every row needs an integer group key: fill it in or drop the rows"
        )
    if kind == "label":
        row, value = first()
        allowed = " or ".join(str(item) for item in table.label_values)
        found = "the label is empty" if value is None else f"label {_value(value)} is not {allowed}"
        raise DataError(
            f"{table.origin}: data row {row}, column {source!r}: {found} ({count} such rows); "
            f"labels must be {allowed}: fix the file"
        )
    if kind == "nan":
        if options.nan == "fail":
            row, value = first()
            shown = _value(value)
            if isinstance(value, float) and math.isinf(value):
                shown += " (infinite, or beyond float32's range of +-3.4e38)"
            raise DataError(
                f"{table.origin}: data row {row}, column {source!r}: {shown} is not a "
                f"finite number ({count} NaN, infinite or empty values in this column); pass "
                "--nan impute to replace them with the training mean, or fix the file"
            )
        result.nonfinite[column] = count
        return
    later = chain[chain.index(column) + 1 :]
    named = later[0] if len(later) == 1 else f"a later task ({', '.join(later)})"
    if options.conversion_without_click == "fail":
        row, _ = first()
        raise DataError(
            f"{table.origin}: data row {row}: {named} is 1 but {column!r} is 0 ({count} such "
            f"rows); a positive {named} implies {column}=1: pass --conversion-without-click "
            f"repair to set {column}=1 on these rows (or keep to leave them), or fix the file"
        )
    if options.conversion_without_click == "repair":
        result.label_repairs[column] = count
    else:
        logger.warning(
            "%s: %d rows have %s=1 but %s=0; kept as they are (--conversion-without-click keep)",
            table.origin,
            count,
            named,
            column,
        )


def _warn_repairs(
    origin: str, domain: str, split: str, result: TableCheck, options: ValidationOptions
) -> None:
    if result.nonfinite:
        total = sum(result.nonfinite.values())
        columns = ", ".join(f"{name} {count}" for name, count in result.nonfinite.items())
        warnings.warn(
            f"{origin} ({domain}/{split}): {total} NaN, infinite or empty numerical values "
            f"replaced by the training mean: {columns}",
            DataRepairWarning,
            stacklevel=4,
        )
    for task, count in result.label_repairs.items():
        warnings.warn(
            f"{origin} ({domain}/{split}): {task} set to 1 on {count} rows where a later task "
            "was 1 (--conversion-without-click repair)",
            DataRepairWarning,
            stacklevel=4,
        )


def check_unique_keys(session: Session, staged: StagedTable, key: str, what: str) -> None:
    """Refuse a table where a key appears twice (the raw user file: one row per page).

    Raises:
        DataError: naming the first repeated key and the two data rows holding it.
    """
    from taa.data.readers.common import sql_name

    name = sql_name(key)
    repeated = session.one(
        f"SELECT count(*) - count(DISTINCT {name}) FROM {staged.scan()}", staged.table.origin
    )[0]
    if not repeated:
        return
    example = session.one(
        f"SELECT {name}, list(file_row_number + 1 ORDER BY file_row_number)[1:2] "
        f"FROM {staged.scan()} GROUP BY {name} HAVING count(*) > 1 "
        "ORDER BY min(file_row_number) LIMIT 1",
        staged.table.origin,
    )
    raise DataError(
        f"{staged.table.origin}: {what} {example[0]} appears on data rows {example[1][0]} and "
        f"{example[1][1]} ({repeated} repeated rows); the file must hold one row per {what}: "
        "remove the repeated rows"
    )


def check_orphans(
    session: Session,
    items: StagedTable,
    pages: StagedTable,
    key: str,
    options: ValidationOptions,
) -> int:
    """Count items whose page is not in the page table; fail if the options say so.

    Returns:
        The number of items that an inner join drops.
    """
    from taa.data.readers.common import sql_name, sql_string

    name = sql_name(key)
    pages_scan = f"read_parquet({sql_string(pages.path)})"
    count, first, page = session.one(
        f"SELECT count(*), min(i.file_row_number), arg_min(i.{name}, i.file_row_number) "
        f"FROM {items.scan()} i ANTI JOIN {pages_scan} p ON i.{name} = p.{name}",
        items.table.origin,
    )
    if not count:
        return 0
    if options.orphan_items == "fail":
        raise DataError(
            f"{items.table.origin}: data row {int(first) + 1}: page id {page} is not in "
            f"{pages.table.origin} ({count} items without a page); pass --orphan-items drop to "
            "leave them out, or add the missing pages"
        )
    logger.warning(
        "%s: %d items have no page in %s and are left out (--orphan-items drop)",
        items.table.origin,
        count,
        pages.table.origin,
    )
    return int(count)

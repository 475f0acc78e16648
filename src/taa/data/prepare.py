"""``taa prepare``: read one or more domains and write one prepared dataset for all of them.

Steps, with bounded memory whatever the input size (DuckDB streams and spills):

1. each domain's train and test split is staged and checked (:mod:`taa.data.readers`,
   :mod:`taa.data.validate`; raw Tianchi splits with the ``arrow`` engine by default, see
   :mod:`taa.data.readers.tianchi`);
2. one pass over the train splits of all domains gives the vocabulary (every categorical
   value seen in training; test values are never added) and the numerical statistics;
3. each split is encoded (:mod:`taa.data.encode`) into ``<domain>/<split>.parquet``;
4. ``vocabulary.json`` and ``schema.json`` (with the vocabulary's digest and the counts in
   ``extra``) are written.

Everything is built in a temporary folder beside the output and moved into place only when
all of it is done, so a failure leaves no dataset behind.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from taa.data.encode import encoding_sql, integer_columns, register_vocabulary
from taa.data.readers import LAYOUTS, DomainReader, Roles, Session, SplitView, open_reader
from taa.data.readers.common import ENGINES, Profile, sql_name, sql_string
from taa.data.schema import SCHEMA_FILE, CategoricalField, NumericalField, Schema
from taa.data.validate import (
    CONVERSION_CHOICES,
    NAN_CHOICES,
    ORPHAN_CHOICES,
    ValidationOptions,
)
from taa.data.vocabulary import Vocabulary, sort_values
from taa.errors import ConfigError, DataError
from taa.io import atomic_directory

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
COMPRESSIONS = ("snappy", "zstd", "uncompressed")
# Parquet dictionaries of at most 4 KiB: small vocabularies keep theirs, while numerical
# columns give up at once; DuckDB's default tries each column and doubles the write time.
DICTIONARY_BYTES = 4096
_DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _option(help_text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    return {"help": help_text, "choices": list(choices)} if choices else {"help": help_text}


@dataclass
class PrepareConfig:
    """Settings of ``taa prepare`` (one field per command-line option).

    Example:
        >>> config = PrepareConfig(out=Path("data"), domains=("A=raw/a", "B=raw/b"))
        >>> sorted(config.domain_paths())
        ['A', 'B']
    """

    out: Path = field(metadata=_option("Folder to write the prepared dataset into."))
    domains: tuple[str, ...] = field(
        default=(),
        metadata=_option(
            "Domains to prepare together, NAME=PATH each (repeat --domain); a bare PATH is "
            "named after its folder or archive (AliExpress_NL -> NL)."
        ),
    )
    layout: str = field(
        default="auto",
        metadata=_option("Input layout of every domain; auto detects it per domain.", LAYOUTS),
    )
    nan: str = field(
        default="fail",
        metadata=_option(
            "NaN, infinite or empty numerical values: fail, or impute the training mean.",
            NAN_CHOICES,
        ),
    )
    conversion_without_click: str = field(
        default="fail",
        metadata=_option(
            "A later task positive where an earlier one is 0: fail, repair (set the earlier "
            "label to 1) or keep.",
            CONVERSION_CHOICES,
        ),
    )
    orphan_items: str = field(
        default="drop",
        metadata=_option(
            "Raw items whose page is not in the user file: drop (counted, logged) or fail.",
            ORPHAN_CHOICES,
        ),
    )
    overwrite: bool = field(
        default=False, metadata=_option("Replace an existing prepared dataset at --out.")
    )
    memory_limit: str = field(
        default="512MB", metadata=_option("DuckDB memory limit; above it, work spills to disk.")
    )
    threads: int = field(default=0, metadata=_option("DuckDB threads; 0 uses every core."))
    engine: str = field(
        default="arrow",
        metadata=_option(
            "How raw Tianchi splits are joined: arrow (the default: Arrow batches joined in "
            "NumPy, in file order; hands input it does not handle to duckdb) or duckdb "
            "(join and sort in DuckDB). Same rows and vocabulary; statistics to the last "
            "digits.",
            ENGINES,
        ),
    )
    work_dir: Path | None = field(
        default=None,
        metadata=_option("Scratch folder for extracted and staged files (default: beside --out)."),
    )
    row_group_size: int = field(
        default=65_536, metadata=_option("Rows per Parquet row group of the prepared splits.")
    )
    compression: str = field(
        default="snappy",
        metadata=_option("Parquet compression of the prepared splits.", COMPRESSIONS),
    )
    quiet: bool = field(default=False, metadata=_option("No progress bar."))

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.domains = tuple(self.domains)
        if self.layout not in LAYOUTS:
            raise ConfigError(f"option --layout got {self.layout!r}; choose one of {list(LAYOUTS)}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(
                f"option --compression got {self.compression!r}; choose one of {list(COMPRESSIONS)}"
            )
        if self.engine not in ENGINES:
            raise ConfigError(f"option --engine got {self.engine!r}; choose one of {list(ENGINES)}")
        if self.threads < 0:
            raise ConfigError(f"option --threads must be >= 0 (0: every core), got {self.threads}")
        if self.row_group_size < 1:
            raise ConfigError(f"option --row-group-size must be >= 1, got {self.row_group_size}")
        self.validation_options()
        self.domain_paths()

    def validation_options(self) -> ValidationOptions:
        return ValidationOptions(
            nan=self.nan,
            conversion_without_click=self.conversion_without_click,
            orphan_items=self.orphan_items,
        )

    def domain_paths(self) -> dict[str, Path]:
        """Domain name -> input path, from the ``NAME=PATH`` entries of :attr:`domains`."""
        paths: dict[str, Path] = {}
        for entry in self.domains:
            name, separator, path = str(entry).partition("=")
            if not separator:
                name, path = default_domain_name(Path(entry)), str(entry)
            name = name.strip()
            if name == "samples":
                raise ConfigError(
                    f"option --domain got {entry!r}: the name 'samples' is reserved (it is the "
                    "folder of `taa sample`'s draws); choose another name, e.g. --domain NL=path"
                )
            if not _DOMAIN_NAME.fullmatch(name):
                raise ConfigError(
                    f"option --domain got {entry!r}: the name {name!r} must be letters, digits, "
                    "'_', '-' or '.' (not starting with '_', '-' or '.'), e.g. --domain NL=path"
                )
            if name in paths:
                raise ConfigError(f"option --domain names {name!r} twice; give each domain once")
            clash = next((other for other in paths if other.lower() == name.lower()), None)
            if clash is not None:
                raise ConfigError(
                    f"option --domain names {clash!r} and {name!r}, which differ only by case "
                    "and would share one folder on a case-insensitive file system; rename one"
                )
            paths[name] = Path(path)
        return paths


def default_domain_name(path: Path) -> str:
    """A domain name from a path: ``AliExpress_NL`` and ``aliexpress_NL_datasets.zip`` -> NL.

    Example:
        >>> default_domain_name(Path("data/aliexpress_NL_datasets.zip"))
        'NL'
    """
    stem = path.name
    for suffix in (".zip", ".yaml", ".yml", ".toml"):
        stem = stem.removesuffix(suffix)
    match = re.fullmatch(r"(?i)aliexpress_([a-z]{2})(_datasets)?", stem)
    return match.group(1).upper() if match else stem


def prepare_dataset(config: PrepareConfig) -> Schema:
    """Prepare every domain of ``config`` into one dataset folder; return its schema.

    Raises:
        ConfigError: no domain, or ``config.out`` exists and ``overwrite`` is false.
        DataError: an input breaks a rule of :mod:`taa.data.validate` (nothing is written).
    """
    started = time.perf_counter()
    domains = config.domain_paths()
    if not domains:
        raise ConfigError("no domain given; pass --domain NAME=PATH once per domain")
    _check_output(config.out, config.overwrite)
    readers = {name: open_reader(path, config.layout) for name, path in domains.items()}
    roles = _common_roles(readers)
    work_root = Path(config.work_dir) if config.work_dir else config.out.parent
    work_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{config.out.name}.work-", dir=work_root))
    progress = _progress(2 * len(readers) * len(SPLITS) + 1, config.quiet)
    try:
        with (
            Session(scratch, config.memory_limit, config.threads, config.engine) as session,
            atomic_directory(config.out, overwrite=config.overwrite) as folder,
        ):
            views = _read_splits(session, readers, config.validation_options(), progress)
            progress.set_postfix_str("vocabulary and statistics")
            vocabulary, numerical = train_profile(
                session, [views[name, "train"] for name in readers], roles
            )
            progress.update()
            schema = Schema(
                categorical=tuple(
                    CategoricalField(name, vocabulary.size(name)) for name in roles.categorical
                ),
                numerical=numerical,
                tasks=roles.tasks,
                group_key=roles.group_key,
                domains=tuple(readers),
                source_format=_source_format(readers),
            )
            counts = _write_splits(session, views, schema, vocabulary, folder, config, progress)
            extra = _extra(readers, views, counts, config.validation_options())
            schema = replace(schema, vocabulary_digest=vocabulary.save(folder), extra=extra)
            schema.save(folder)
    finally:
        progress.close()
        shutil.rmtree(scratch, ignore_errors=True)
    for line in summary_lines(schema):
        logger.debug("%s", line)
    logger.info(
        "prepared %d rows into %s in %.1f s",
        sum(item["rows"] for item in counts.values()),
        config.out,
        time.perf_counter() - started,
    )
    return schema


def _read_splits(
    session: Session,
    readers: dict[str, DomainReader],
    options: ValidationOptions,
    progress: Any,
) -> dict[tuple[str, str], SplitView]:
    """Stage and check every split of every domain."""
    views: dict[tuple[str, str], SplitView] = {}
    for name, reader in readers.items():
        for split in SPLITS:
            progress.set_postfix_str(f"reading {name}/{split}")
            views[name, split] = reader.load_split(session, name, split, options)
            progress.update()
    return views


def _write_splits(
    session: Session,
    views: dict[tuple[str, str], SplitView],
    schema: Schema,
    vocabulary: Vocabulary,
    folder: Path,
    config: PrepareConfig,
    progress: Any,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Encode every split into ``folder/<domain>/<split>.parquet``; return their counts."""
    types = register_vocabulary(session, vocabulary, schema.categorical_names)
    repair = config.conversion_without_click == "repair"
    counts: dict[tuple[str, str], dict[str, Any]] = {}
    for (name, split), view in views.items():
        progress.set_postfix_str(f"writing {name}/{split}")
        target = folder / name / f"{split}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        integer = integer_columns(session, view)
        sql = encoding_sql(view, schema, types, repair_labels=repair, integer=integer)
        session.rows(
            f"COPY ({sql}) TO {sql_string(target)} (FORMAT parquet, "
            f"COMPRESSION {config.compression}, ROW_GROUP_SIZE {config.row_group_size}, "
            f"DICTIONARY_SIZE_LIMIT {DICTIONARY_BYTES})",
            view.origin,
        )
        counts[name, split] = split_counts(session, target, schema)
        _log_counts(name, split, counts[name, split])
        progress.update()
    return counts


def _progress(total: int, quiet: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="prepare", unit="step", disable=quiet or not sys.stderr.isatty())


def _check_output(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ConfigError(
            f"option --out: {out} already exists; pass --overwrite to replace it or choose "
            "another folder"
        )
    if not out.is_dir() or (any(out.iterdir()) and not (out / SCHEMA_FILE).is_file()):
        raise ConfigError(
            f"option --out: {out} exists and is not a prepared dataset (no {SCHEMA_FILE}); "
            "--overwrite only replaces a dataset folder: choose another --out"
        )
    logger.info("replacing the prepared dataset %s (its samples too)", out)


def _common_roles(readers: dict[str, DomainReader]) -> Roles:
    items = list(readers.items())
    first_name, first = items[0]
    for name, reader in items[1:]:
        if reader.roles != first.roles:
            raise DataError(
                f"domain {name!r} ({reader.layout}, {reader.path}) does not have the columns of "
                f"domain {first_name!r} ({first.layout}, {first.path}); one dataset needs the "
                "same group key, features and tasks in every domain"
            )
    return first.roles


def _source_format(readers: dict[str, DomainReader]) -> str:
    layouts = {reader.layout for reader in readers.values()}
    return layouts.pop() if len(layouts) == 1 else "mixed"


def train_profile(
    session: Session, views: list[SplitView], roles: Roles
) -> tuple[Vocabulary, tuple[NumericalField, ...]]:
    """The vocabulary and numerical statistics of the given (train) splits.

    Statistics use finite values only: mean, population standard deviation, minimum and
    maximum. A field with no finite value gets mean 0 and standard deviation 0 (logged).
    When every view carries a :class:`Profile` (filled while its reader streamed the rows),
    the vocabulary comes from them instead of another pass over the splits.
    """
    select = [
        f"CAST({sql_name(name)} AS VARCHAR) AS {sql_name(name)}" for name in roles.categorical
    ]
    select += [sql_name(name) for name in roles.numerical]
    union = " UNION ALL ".join(
        f"SELECT {', '.join(select)} FROM ({view.relation})" for view in views
    )
    profiles = [view.profile for view in views if view.profile is not None]
    if views and len(profiles) == len(views):
        vocabulary = _vocabulary_from_profiles(profiles, roles)
    else:
        vocabulary = _vocabulary(session, union, roles)
    return vocabulary, _statistics(session, union, roles)


def _vocabulary_from_profiles(profiles: list[Profile], roles: Roles) -> Vocabulary:
    """The vocabulary from profiles of the train splits (the text DuckDB's CAST gives)."""
    merged = Profile.merge(profiles)
    return Vocabulary(
        {
            name: tuple(sort_values(str(value) for value in merged.values(name)))
            for name in roles.categorical
        }
    )


def _vocabulary(session: Session, union: str, roles: Roles) -> Vocabulary:
    """Distinct values per categorical field, from one grouping-sets pass (spills if large)."""
    names = [sql_name(name) for name in roles.categorical]
    values: dict[str, list[str]] = {name: [] for name in roles.categorical}
    if names:
        sets = ", ".join(f"({name})" for name in names)
        flags = ", ".join(f"GROUPING({name})" for name in names)
        rows = session.rows(
            f"SELECT [{flags}], {', '.join(names)} FROM ({union}) GROUP BY GROUPING SETS ({sets})",
            "train splits",
        )
        for flags_row, *row in rows:
            position = flags_row.index(0)  # the one field this row groups by
            if row[position] is not None:
                values[roles.categorical[position]].append(row[position])
    return Vocabulary({name: tuple(sort_values(found)) for name, found in values.items()})


def _statistics(session: Session, union: str, roles: Roles) -> tuple[NumericalField, ...]:
    # CASE rather than FILTER: DuckDB runs hundreds of FILTER clauses ten times slower.
    parts = []
    for name in roles.numerical:
        finite = f"CASE WHEN isfinite({sql_name(name)}) THEN {sql_name(name)} END"
        parts += [f"{aggregate}({finite})" for aggregate in ("avg", "stddev_pop", "min", "max")]
    if not parts:
        return ()
    row = session.one(f"SELECT {', '.join(parts)} FROM ({union})", "train splits")
    numerical = []
    for position, name in enumerate(roles.numerical):
        mean, std, low, high = row[4 * position : 4 * position + 4]
        if mean is None:
            logger.warning("numerical field %s has no finite value in training; mean 0", name)
        numerical.append(
            NumericalField(
                name,
                mean=float(mean or 0.0),
                std=float(std or 0.0),
                minimum=float(low or 0.0),
                maximum=float(high or 0.0),
            )
        )
    return tuple(numerical)


def split_counts(session: Session, path: Path, schema: Schema) -> dict[str, Any]:
    """Rows, positives per task, out-of-vocabulary values per field and duplicate rows.

    Duplicates are rows equal in every prepared column, found with a 64-bit row hash.
    """
    columns = [schema.group_key, *schema.feature_columns, *schema.tasks]
    parts = ["count(*)"]
    parts += [f"sum({sql_name(task)})" for task in schema.tasks]
    parts += [
        f"count(CASE WHEN {sql_name(name)} = 0 THEN 1 END)" for name in schema.categorical_names
    ]
    parts.append(f"count(DISTINCT hash({', '.join(sql_name(name) for name in columns)}))")
    row = session.one(f"SELECT {', '.join(parts)} FROM read_parquet({sql_string(path)})", str(path))
    tasks = len(schema.tasks)
    return {
        "rows": int(row[0]),
        "positives": {task: int(row[1 + i] or 0) for i, task in enumerate(schema.tasks)},
        "oov": {name: int(row[1 + tasks + i]) for i, name in enumerate(schema.categorical_names)},
        "duplicates": int(row[0]) - int(row[-1]),
    }


def _log_counts(name: str, split: str, counts: dict[str, Any]) -> None:
    unseen = {field: count for field, count in counts["oov"].items() if count}
    if unseen:
        shown = ", ".join(f"{field} {count}" for field, count in unseen.items())
        logger.info("%s/%s: out-of-vocabulary values per field: %s", name, split, shown)
    if counts["duplicates"]:
        logger.info(
            "%s/%s: %d rows repeat an earlier row exactly (kept)", name, split, counts["duplicates"]
        )


def _extra(
    readers: dict[str, DomainReader],
    views: dict[tuple[str, str], SplitView],
    counts: dict[tuple[str, str], dict[str, Any]],
    options: ValidationOptions,
) -> dict[str, Any]:
    def per_split(value: Any) -> dict[str, dict[str, Any]]:
        table: dict[str, dict[str, Any]] = {}
        for (name, split), item in counts.items():
            table.setdefault(name, {})[split] = value(item, views[name, split])
        return table

    return {
        "sources": {
            name: {"layout": reader.layout, "path": str(reader.path)}
            for name, reader in readers.items()
        },
        "options": {
            "nan": options.nan,
            "conversion_without_click": options.conversion_without_click,
            "orphan_items": options.orphan_items,
        },
        "rows": per_split(lambda item, view: item["rows"]),
        "positives": per_split(lambda item, view: item["positives"]),
        "oov_counts": per_split(lambda item, view: item["oov"]),
        "duplicate_rows": per_split(lambda item, view: item["duplicates"]),
        "imputed_values": per_split(lambda item, view: dict(view.nonfinite)),
        "label_repairs": per_split(lambda item, view: dict(view.label_repairs)),
        "orphan_items": per_split(lambda item, view: view.notes.get("orphan_items", 0)),
    }


def summary_lines(schema: Schema) -> list[str]:
    """A short text summary of a prepared dataset: rows, positives and OOV counts per split."""
    extra = schema.extra
    tasks = list(schema.tasks)
    lines = [
        f"{'domain':<10} {'split':<6} {'rows':>12} "
        + " ".join(f"{task:>12}" for task in tasks)
        + f" {'oov values':>12} {'duplicates':>12}"
    ]
    for name in schema.domains:
        for split in SPLITS:
            positives = extra["positives"][name][split]
            oov = sum(extra["oov_counts"][name][split].values())
            lines.append(
                f"{name:<10} {split:<6} {extra['rows'][name][split]:>12} "
                + " ".join(f"{positives[task]:>12}" for task in tasks)
                + f" {oov:>12} {extra['duplicate_rows'][name][split]:>12}"
            )
    for name in schema.domains:
        for split in SPLITS:
            fields = {k: v for k, v in extra["oov_counts"][name][split].items() if v}
            if fields:
                shown = ", ".join(f"{field} {count}" for field, count in fields.items())
                lines.append(f"out-of-vocabulary {name}/{split}: {shown}")
    return lines

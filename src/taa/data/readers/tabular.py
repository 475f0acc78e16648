"""Any CSV or Parquet table, with a small YAML or TOML schema file naming each column's role.

Example schema file (``shop.yaml``; paths are relative to the schema file)::

    group_key: session_id          # integer column grouping rows (a page, a session)
    categorical: [country, device, item_category]
    numerical: [price, rating]
    tasks: [click, purchase]       # 0/1 labels in funnel order; more than two allowed
    ignore: [timestamp]            # columns present in the files but not used
    train: shop_train.csv
    test: shop_test.parquet

The same in TOML (``shop.toml``) uses ``key = value`` lines. Categorical values of a CSV
are read as text (``07`` and ``7`` are different categories); a Parquet file's integer or
string columns are read as they are.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from taa.data.readers.common import (
    CSV_SUFFIXES,
    PARQUET_SUFFIXES,
    DomainReader,
    Roles,
    Session,
    SplitView,
    flat_table,
)
from taa.data.readers.processed import load_single_table
from taa.data.validate import ValidationOptions, check_roles
from taa.errors import DataError

SCHEMA_SUFFIXES = (".yaml", ".yml", ".toml")
_LIST_KEYS = ("categorical", "numerical", "tasks", "ignore")
_TEXT_KEYS = ("group_key", "train", "test")
_REQUIRED = ("group_key", "tasks", "train", "test")


def is_schema_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in SCHEMA_SUFFIXES


def read_schema_file(path: Path) -> dict[str, Any]:
    """Parse and check a tabular schema file (YAML or TOML); see the module docstring.

    Raises:
        DataError: unreadable file, unknown or missing keys, or values of the wrong type.
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the schema file ({error})") from error
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line} is not UTF-8 text (byte {raw[error.start]:#04x} at offset "
            f"{error.start}); save the schema file as UTF-8"
        ) from error
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, ValueError, ImportError) as error:
        raise DataError(f"{path}: not a valid schema file ({error}); fix its syntax") from error
    except Exception as error:  # yaml.YAMLError does not derive from ValueError
        raise DataError(f"{path}: not a valid schema file ({error}); fix its syntax") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: a schema file is a mapping of keys such as `group_key: id`")
    unknown = sorted(set(data) - set(_LIST_KEYS) - set(_TEXT_KEYS))
    if unknown:
        raise DataError(
            f"{path}: unknown keys {unknown}; allowed: {sorted(_LIST_KEYS + _TEXT_KEYS)}"
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; see docs/data-format.md")
    for key in _TEXT_KEYS:
        if not isinstance(data[key], str) or not data[key]:
            raise DataError(f"{path}: `{key}` must be a text value, got {data[key]!r}")
    for key in _LIST_KEYS:
        value = data.setdefault(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise DataError(f"{path}: `{key}` must be a list of column names, got {value!r}")
    return data


class TabularReader(DomainReader):
    """A train and a test table (CSV with a header, or Parquet) described by a schema file."""

    layout = "tabular"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        if not is_schema_file(self.path):
            raise DataError(
                f"{self.path}: the tabular layout needs a schema file ending in "
                f"{list(SCHEMA_SUFFIXES)}; see docs/data-format.md"
            )
        self.spec = read_schema_file(self.path)
        self._roles = Roles(
            group_key=self.spec["group_key"],
            categorical=tuple(self.spec["categorical"]),
            numerical=tuple(self.spec["numerical"]),
            tasks=tuple(self.spec["tasks"]),
        )
        check_roles(str(self.path), self._roles, self.spec["ignore"])

    @property
    def roles(self) -> Roles:
        return self._roles

    def file(self, split: str) -> Path:
        """The table file of ``split``, resolved against the schema file's folder."""
        path = self.path.parent / self.spec[split]
        if path.suffix.lower() not in CSV_SUFFIXES + PARQUET_SUFFIXES:
            raise DataError(
                f"{self.path}: `{split}: {self.spec[split]}` must name a .csv or .parquet file"
            )
        if not path.is_file():
            raise DataError(f"{self.path}: the {split} file {path} does not exist")
        return path

    def load_split(
        self,
        session: Session,
        domain: str,
        split: str,
        options: ValidationOptions,
        *,
        scoring: bool = False,
    ) -> SplitView:
        table = flat_table(
            self.file(split),
            self.roles,
            ignore=self.spec["ignore"],
            tasks_required=not scoring,
            text_categories=True,
        )
        return load_single_table(
            session, table, self.roles, domain=domain, split=split, options=options
        )

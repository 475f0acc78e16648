"""Readers of the input layouts ``taa prepare`` accepts, and detection of the layout.

* ``tianchi``: the raw Tianchi download (:mod:`taa.data.readers.tianchi`);
* ``processed``: the 82-column community layout (:mod:`taa.data.readers.processed`);
* ``tabular``: any CSV or Parquet with a YAML/TOML schema file (:mod:`taa.data.readers.tabular`).
"""

from __future__ import annotations

from pathlib import Path

from taa.data.readers.common import DomainReader, Roles, Session, SplitView
from taa.data.readers.processed import ProcessedReader, is_processed_folder
from taa.data.readers.tabular import SCHEMA_SUFFIXES, TabularReader
from taa.data.readers.tianchi import TianchiReader, locate_parts
from taa.errors import ConfigError, DataError

LAYOUTS = ("auto", "tianchi", "processed", "tabular")
READERS: dict[str, type[DomainReader]] = {
    "tianchi": TianchiReader,
    "processed": ProcessedReader,
    "tabular": TabularReader,
}

__all__ = [
    "LAYOUTS",
    "DomainReader",
    "Roles",
    "Session",
    "SplitView",
    "detect_layout",
    "open_reader",
]


def detect_layout(path: str | Path) -> str:
    """Guess the layout of ``path``: ``tianchi``, ``processed`` or ``tabular``.

    A ``.yaml``/``.yml``/``.toml`` file is a tabular schema file; a ``.zip`` file or a folder
    with files ending in ``user_train.zip``/``.csv`` (or one ``*_datasets.zip``) is a raw
    Tianchi download; a folder with ``train`` and ``test`` CSV/Parquet files is processed.

    Raises:
        DataError: the path does not exist or matches no layout.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in SCHEMA_SUFFIXES:
        return "tabular"
    if path.is_file() and path.suffix.lower() == ".zip":
        return "tianchi"
    if is_processed_folder(path):
        return "processed"
    if path.is_dir() and locate_parts(path):
        return "tianchi"
    raise DataError(
        f"{path}: cannot tell its layout; expected a folder with train.csv and test.csv "
        "(processed), aliexpress_XX_datasets.zip or a folder of xx_user_train.zip etc. "
        "(tianchi), or a .yaml/.toml schema file (tabular); pass --layout to choose"
    )


def open_reader(path: str | Path, layout: str = "auto") -> DomainReader:
    """A reader for ``path`` in ``layout`` (``auto`` detects it)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"option --layout got {layout!r}; choose one of {list(LAYOUTS)}")
    chosen = detect_layout(path) if layout == "auto" else layout
    return READERS[chosen](Path(path))

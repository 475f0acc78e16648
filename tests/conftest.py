"""Shared fixtures: the real AliExpress rows, a writer of small raw Tianchi downloads, and
the restoring of torch's thread counts after every test.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

pytest_plugins = ("pytester",)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "aliexpress-real"

USER_CATEGORICAL = (2, 3, 4, 5, 6, 7, 8, 32, 33)
ITEM_CATEGORICAL = (19, 34, 35, 36, 40, 41, 42)


@pytest.fixture(autouse=True)
def restore_torch_threads(request: pytest.FixtureRequest) -> Iterator[None]:
    """Put torch's intra-op and inter-op thread counts back as they were before each test.

    ``--threads N`` (``apply_threads``) sets torch's process-wide count, which would
    otherwise stay for every later test. The inter-op count can only be set before torch's
    first parallel work, so a test that changed it anyway fails here, by name.
    """
    threads, interop = torch.get_num_threads(), torch.get_num_interop_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != interop:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError as error:
            raise RuntimeError(
                f"{request.node.nodeid} changed torch's inter-op threads from {interop} to "
                f"{torch.get_num_interop_threads()}, which cannot be undone ({error})"
            ) from error


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder holding the real processed rows ``A/``, ``B/`` and ``NL/``."""
    if not (REAL_DATA / "A" / "train.csv").is_file():
        raise FileNotFoundError(f"{REAL_DATA}: the real AliExpress rows are missing")
    return REAL_DATA


class RawCountry:
    """Writes the raw Tianchi layout with values that tell their origin.

    A user (page) row holds ``page * 100 + c`` in categorical column ``c`` and ``page + c/100``
    in numerical column ``c``; an item row ``r`` holds ``r * 100 + c`` in categorical column
    ``c`` and ``500 + r + c/1000`` in numerical column ``c``, then its label in column 49.
    """

    user_categorical = USER_CATEGORICAL
    item_categorical = ITEM_CATEGORICAL

    @staticmethod
    def user(page: int) -> list[str]:
        values = [str(page)]
        for column in range(2, 34):
            if column in USER_CATEGORICAL:
                values.append(str(page * 100 + column))
            else:
                values.append(f"{page}.{column:02d}")
        return values

    @staticmethod
    def item(row: int, page: int, label: int) -> list[str]:
        values = [str(page)]
        for column in range(2, 49):
            if column in ITEM_CATEGORICAL:
                values.append(str(row * 100 + column))
            else:
                values.append(f"{500 + row}.{column:03d}")
        return [*values, str(label)]

    @staticmethod
    def write(
        folder: Path,
        parts: dict[str, Sequence[Sequence[str]]],
        *,
        code: str = "nl",
        form: str = "outer",
    ) -> Path:
        """Write ``parts`` (``user_train`` -> rows, ...) and return the path to read.

        ``form``: ``outer`` (``aliexpress_XX_datasets.zip``), ``inner`` (a folder of the
        four inner zips) or ``csv`` (a folder of the four CSVs).
        """
        folder.mkdir(parents=True, exist_ok=True)
        csvs = {}
        for part, rows in parts.items():
            text = "".join(",".join(row) + "\n" for row in rows)
            csvs[part] = (f"{code}_{part}.csv", text)
        if form == "csv":
            for name, text in csvs.values():
                (folder / name).write_text(text)
            return folder
        inner = {}
        for part, (name, text) in csvs.items():
            path = folder / f"{code}_{part}.zip"
            with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(name, text)
            inner[part] = path
        if form == "inner":
            return folder
        outer = folder / f"aliexpress_{code.upper()}_datasets.zip"
        with zipfile.ZipFile(outer, "w", zipfile.ZIP_STORED) as archive:
            for path in inner.values():
                archive.write(path, path.name)
                path.unlink()
        return outer


@pytest.fixture(scope="session")
def raw_country() -> RawCountry:
    """Helpers to build raw Tianchi rows and write them as zips or CSVs."""
    return RawCountry()


PROCESSED_HEADER = (
    ["search_id"]
    + [f"categorical_{index}" for index in range(1, 17)]
    + [f"numerical_{index}" for index in range(1, 64)]
    + ["click", "conversion"]
)


class ProcessedFolder:
    """Writes small folders in the processed layout (``train.csv``, ``test.csv``)."""

    header = PROCESSED_HEADER

    @staticmethod
    def row(page: int, code: int, number: float, click: int = 0, conversion: int = 0) -> list[str]:
        """A row whose 16 categorical values are ``code`` and 63 numerical ones ``number``."""
        return [str(page), *[str(code)] * 16, *[repr(number)] * 63, str(click), str(conversion)]

    @staticmethod
    def write(folder: Path, train: Sequence[Sequence[str]], test: Sequence[Sequence[str]]) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", train), ("test", test)):
            lines = [",".join(PROCESSED_HEADER)] + [",".join(row) for row in rows]
            (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
        return folder


@pytest.fixture(scope="session")
def processed_folder() -> ProcessedFolder:
    """Helpers to write small processed-layout folders."""
    return ProcessedFolder()

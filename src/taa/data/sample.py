"""A reproducible, label-stratified sample of a target domain's train rows, with a validation part.

Adaptation assumes little labelled target data: a fraction (1 % by default) of the target's
train split. Positives are rare (about 2 % clicks, 0.07 % purchases), so a uniform draw of
1 % could hold no purchase at all. The sample is therefore drawn inside each *stratum*, the
tuple of task labels of a row (``(0, 0)``, ``(1, 0)``, ``(1, 1)`` for click/conversion):

* sample rows of a stratum of ``n`` rows: ``round(fraction * n)`` with halves rounded up,
  but at least 1 when ``n > 0`` and never more than ``n``;
* validation rows of a stratum with ``k`` sampled rows: ``round(valid_fraction * k)``,
  halves up, kept between 1 and ``k - 1`` when ``k >= 2``; none when ``k == 1`` (the row
  goes to the train part).

Each stratum's rows are ordered by one seeded permutation (``numpy.random.Generator(PCG64(
seed))``, strata in sorted order); the sample is the first rows of that order and the
validation part the last of those, so for one seed a larger fraction's sample holds a
smaller one's. Only ``<domain>/train.parquet`` is read, never the test split.

Output, written atomically::

    DATASET/<domain>/samples/<name>/train.parquet, valid.parquet, sample.json

and loadable with ``load_split(dataset, domain, "samples/<name>/train")``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from taa.data.batches import split_path
from taa.data.schema import Schema
from taa.errors import ConfigError, DataError
from taa.io import atomic_directory, atomic_write_json

logger = logging.getLogger(__name__)

SAMPLES_FOLDER = "samples"
SAMPLE_FILE = "sample.json"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class SampleConfig:
    """Options of ``taa sample`` (the dataset folder is its argument); see :func:`draw_sample`."""

    domain: str = field(metadata={"help": "Target domain to sample (a domain of the dataset)."})
    fraction: float = field(
        default=0.01, metadata={"help": "Share of the train rows to draw, in (0, 1]."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the draw."})
    valid_fraction: float = field(
        default=0.2,
        metadata={"help": "Share of the sample set aside for validation, in (0, 1)."},
    )
    name: str | None = field(
        default=None, metadata={"help": "Sample name; default f<fraction>-s<seed>, e.g. f0.01-s0."}
    )


@dataclass(frozen=True)
class StratumCount:
    """Rows of one label stratum: in the train split, and drawn into each part of the sample.

    Args:
        labels: the stratum, one 0/1 label per task in schema order.
        population: rows of the stratum in the domain's train split.
        train: sampled rows kept for training.
        valid: sampled rows set aside for validation.
    """

    labels: tuple[int, ...]
    population: int
    train: int
    valid: int


@dataclass(frozen=True)
class SampleInfo:
    """What :func:`draw_sample` drew and where it wrote it (the content of ``sample.json``)."""

    dataset: Path
    domain: str
    name: str
    fraction: float
    seed: int
    valid_fraction: float
    tasks: tuple[str, ...]
    source_rows: int
    strata: tuple[StratumCount, ...]
    indices_digest: str
    source_digest: str = ""
    schema_digest: str = ""

    @property
    def directory(self) -> Path:
        return Path(self.dataset) / self.domain / SAMPLES_FOLDER / self.name

    @property
    def train_split(self) -> str:
        """The split name that :func:`taa.data.batches.load_split` takes for the train part."""
        return f"{SAMPLES_FOLDER}/{self.name}/train"

    @property
    def valid_split(self) -> str:
        return f"{SAMPLES_FOLDER}/{self.name}/valid"

    @property
    def train_rows(self) -> int:
        return sum(item.train for item in self.strata)

    @property
    def valid_rows(self) -> int:
        return sum(item.valid for item in self.strata)

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "name": self.name,
            "fraction": self.fraction,
            "seed": self.seed,
            "valid_fraction": self.valid_fraction,
            "tasks": list(self.tasks),
            "source_rows": self.source_rows,
            "train_rows": self.train_rows,
            "valid_rows": self.valid_rows,
            "strata": [
                {
                    "labels": dict(zip(self.tasks, item.labels, strict=True)),
                    "population": item.population,
                    "train": item.train,
                    "valid": item.valid,
                }
                for item in self.strata
            ],
            "indices_digest": self.indices_digest,
            "source_digest": self.source_digest,
            "schema_digest": self.schema_digest,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], dataset: str | Path) -> SampleInfo:
        tasks = tuple(data["tasks"])
        return cls(
            dataset=Path(dataset),
            domain=data["domain"],
            name=data["name"],
            fraction=float(data["fraction"]),
            seed=int(data["seed"]),
            valid_fraction=float(data["valid_fraction"]),
            tasks=tasks,
            source_rows=int(data["source_rows"]),
            strata=tuple(
                StratumCount(
                    labels=tuple(int(item["labels"][task]) for task in tasks),
                    population=int(item["population"]),
                    train=int(item["train"]),
                    valid=int(item["valid"]),
                )
                for item in data["strata"]
            ),
            indices_digest=data["indices_digest"],
            source_digest=data.get("source_digest", ""),
            schema_digest=data.get("schema_digest", ""),
        )


def default_name(fraction: float, seed: int) -> str:
    """The default sample name, ``f<fraction>-s<seed>``.

    Example:
        >>> default_name(0.01, 0)
        'f0.01-s0'
    """
    return f"f{fraction:g}-s{seed}"


def sample_count(population: int, fraction: float) -> int:
    """Rows drawn from a stratum of ``population`` rows: ``round(fraction * population)``.

    Halves round up; a non-empty stratum gives at least one row, and never more than it has.

    Example:
        >>> [sample_count(n, 0.01) for n in (0, 1, 149, 150, 250, 1000)]
        [0, 1, 1, 2, 3, 10]
    """
    if population <= 0:
        return 0
    return min(population, max(1, math.floor(fraction * population + 0.5)))


def valid_count(sampled: int, valid_fraction: float) -> int:
    """Rows of a stratum's ``sampled`` rows set aside for validation.

    ``round(valid_fraction * sampled)`` with halves up, kept between 1 and ``sampled - 1``
    when ``sampled >= 2`` so both parts see the stratum; 0 when ``sampled < 2``.

    Example:
        >>> [valid_count(k, 0.2) for k in (0, 1, 2, 3, 10, 12)]
        [0, 0, 1, 1, 2, 2]
    """
    if sampled < 2:
        return 0
    return min(sampled - 1, max(1, math.floor(valid_fraction * sampled + 0.5)))


def _check_options(fraction: float, valid_fraction: float, name: str, seed: int = 0) -> None:
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(
            f"option --fraction must be in (0, 1], got {fraction}; e.g. --fraction 0.01 for 1 %"
        )
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(
            f"option --valid-fraction must be strictly between 0 and 1, got {valid_fraction}; "
            "e.g. --valid-fraction 0.2"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"option --seed must be an integer >= 0, got {seed!r}; e.g. --seed 0")
    if not _NAME_PATTERN.match(name):
        raise ConfigError(
            f"option --name {name!r} is not a sample name; use letters, digits, '.', '_' and '-' "
            "starting with a letter or digit (no '/')"
        )


def _read_population(dataset: Path, domain: str, schema: Schema) -> tuple[Any, np.ndarray, Path]:
    """The domain's train table and its labels ``[R, T]`` (int64), checked to be 0/1."""
    import pyarrow.parquet as pq

    if schema.domains and domain not in schema.domains:
        raise DataError(
            f"{dataset}: domain {domain!r} is not in this dataset; "
            f"choose one of {list(schema.domains)}"
        )
    path = split_path(dataset, domain, "train")
    if not path.is_file():
        raise DataError(
            f"{path}: the train split of domain {domain!r} is missing; re-run `taa prepare`"
        )
    table = pq.read_table(path)
    if table.num_rows == 0:
        raise DataError(
            f"{path}: the train split of domain {domain!r} has no rows; nothing to sample from "
            "(re-run `taa prepare` with a non-empty train file)"
        )
    missing = [task for task in schema.tasks if task not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing label columns {missing}; re-run `taa prepare`")
    columns = []
    for task in schema.tasks:
        column = table.column(task)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(
                f"{path}: column {task!r} has {column.null_count} missing labels (first at row "
                f"{row}); labels must be 0 or 1, re-run `taa prepare`"
            )
        values = column.to_numpy()
        bad = np.flatnonzero((values != 0) & (values != 1))
        if bad.size:
            raise DataError(
                f"{path}: column {task!r} row {int(bad[0]) + 1} holds {values[bad[0]].item()!r}; "
                f"labels must be 0 or 1 ({bad.size} bad rows), re-run `taa prepare`"
            )
        columns.append(values.astype(np.int64))
    return table, np.stack(columns, axis=1), path


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _indices_digest(train: np.ndarray, valid: np.ndarray) -> str:
    digest = hashlib.sha256()
    for label, indices in ((b"train", train), (b"valid", valid)):
        digest.update(label)
        digest.update(np.asarray(indices, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def draw_sample(
    dataset: str | Path,
    domain: str,
    fraction: float = 0.01,
    seed: int = 0,
    valid_fraction: float = 0.2,
    name: str | None = None,
) -> SampleInfo:
    """Draw a stratified sample of a domain's train rows and split it into train and valid.

    The rules are those of the module docstring. A sample folder of the same name is
    replaced (atomically); a warning says so when it had been drawn with other settings.

    Args:
        dataset: prepared dataset folder (made by ``taa prepare``).
        domain: the domain to sample, one of the dataset's domains.
        fraction: share of each label stratum to draw, in ``(0, 1]``.
        seed: seed of the draw; the same seed on the same data gives the same rows.
        valid_fraction: share of each stratum's sampled rows set aside for validation,
            in ``(0, 1)``.
        name: folder name under ``<domain>/samples/``; default ``f<fraction>-s<seed>``.

    Returns:
        The sample's description, also written to ``sample.json``.

    Raises:
        ConfigError: a fraction out of range or a bad name.
        DataError: unknown domain, missing or empty train split, labels not 0/1, or a
            sample too small to leave a validation part and two train rows.

    Example:
        >>> info = draw_sample("dataset", "B", fraction=0.01, seed=0)  # doctest: +SKIP
        >>> load_split("dataset", "B", info.train_split)  # doctest: +SKIP
    """
    _check_options(fraction, valid_fraction, "x", seed)
    name = default_name(fraction, seed) if name is None else name
    _check_options(fraction, valid_fraction, name, seed)
    dataset = Path(dataset)
    schema = Schema.load(dataset)
    table, labels, source_path = _read_population(dataset, domain, schema)

    # one seeded permutation per stratum; the sample is its head, validation the head's tail
    rng = np.random.Generator(np.random.PCG64(seed))
    strata, inverse = np.unique(labels, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    train_parts, valid_parts, counts = [], [], []
    for number, stratum in enumerate(strata):
        members = np.flatnonzero(inverse == number)
        order = members[rng.permutation(members.size)]
        drawn = sample_count(members.size, fraction)
        held_out = valid_count(drawn, valid_fraction)
        train_parts.append(order[: drawn - held_out])
        valid_parts.append(order[drawn - held_out : drawn])
        counts.append(
            StratumCount(tuple(int(v) for v in stratum), members.size, drawn - held_out, held_out)
        )
    train_index = np.sort(np.concatenate(train_parts))
    valid_index = np.sort(np.concatenate(valid_parts))
    _check_size(source_path, counts, fraction, train_index.size, valid_index.size)

    info = SampleInfo(
        dataset=dataset,
        domain=domain,
        name=name,
        fraction=float(fraction),
        seed=int(seed),
        valid_fraction=float(valid_fraction),
        tasks=tuple(schema.tasks),
        source_rows=table.num_rows,
        strata=tuple(counts),
        indices_digest=_indices_digest(train_index, valid_index),
        source_digest=_file_digest(source_path),
        schema_digest=schema.digest(),
    )
    _write(info, table, train_index, valid_index)
    logger.info(
        "sample %s of %s: %d train + %d valid rows of %d (%s)",
        name,
        domain,
        info.train_rows,
        info.valid_rows,
        info.source_rows,
        ", ".join(f"{c.labels}: {c.train}+{c.valid}/{c.population}" for c in counts),
    )
    return info


def _check_size(
    path: Path, counts: list[StratumCount], fraction: float, train_rows: int, valid_rows: int
) -> None:
    if valid_rows >= 1 and train_rows >= 2:
        return
    largest = max(item.population for item in counts)
    total = sum(item.population for item in counts)
    # the smallest fraction that draws 3 rows (2 train + 1 valid) from the largest stratum
    needed = 2.5 / largest
    fix = (
        f"raise --fraction to at least {needed:.3g}"
        if needed < 1.0
        else f"the train split is too small to sample from; prepare more than {total} rows"
    )
    raise DataError(
        f"{path}: a sample of fraction {fraction} draws {train_rows} train and {valid_rows} "
        f"validation rows from {total}; a validation split needs 1 row and training 2: {fix}"
    )


def _write(info: SampleInfo, table: Any, train_index: np.ndarray, valid_index: np.ndarray) -> None:
    import pyarrow.parquet as pq

    directory = info.directory
    if (directory / SAMPLE_FILE).is_file():
        try:
            old = load_sample(info.dataset, info.domain, info.name)
            same = (old.fraction, old.seed, old.valid_fraction, old.indices_digest) == (
                info.fraction,
                info.seed,
                info.valid_fraction,
                info.indices_digest,
            )
            before = f"fraction {old.fraction}, seed {old.seed}, valid {old.valid_fraction}"
        except DataError:
            same, before = False, "unreadable settings"
        if not same:
            logger.warning(
                "replacing sample %s of %s (%s) by a new draw (fraction %s, seed %s, valid %s)",
                info.name,
                info.domain,
                before,
                info.fraction,
                info.seed,
                info.valid_fraction,
            )
    with atomic_directory(directory, overwrite=True) as staging:
        pq.write_table(table.take(train_index), staging / "train.parquet")
        pq.write_table(table.take(valid_index), staging / "valid.parquet")
        atomic_write_json(staging / SAMPLE_FILE, info.to_dict())


def load_sample(dataset: str | Path, domain: str, name: str) -> SampleInfo:
    """Read the ``sample.json`` of sample ``name`` of ``domain``.

    Raises:
        DataError: no such sample, or an unreadable ``sample.json``.
    """
    import json

    path = Path(dataset) / domain / SAMPLES_FOLDER / name / SAMPLE_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: no sample {name!r} of domain {domain!r}; draw it with `taa sample`"
        )
    try:
        return SampleInfo.from_dict(json.loads(path.read_text()), dataset)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{path}: unreadable sample description ({error}); draw it again"
        ) from error

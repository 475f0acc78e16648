"""The dataset schema: one description of fields, tasks and domains shared by all domains.

A prepared dataset is a folder::

    DATASET/
      schema.json                      # this module's Schema
      vocabulary.json                  # raw category value -> index, per field
      <domain>/train.parquet           # one folder per domain
      <domain>/test.parquet
      <domain>/samples/<name>/train.parquet, valid.parquet, sample.json   # from `taa sample`

Category indices are ``1..vocab_size-1``; index :data:`OOV_INDEX` (0) is reserved for
values never seen where the vocabulary was built. One schema covers source and target,
so a model trained on one domain always has the shapes another domain needs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taa.errors import DataError

OOV_INDEX = 0
SCHEMA_FILE = "schema.json"
VOCABULARY_FILE = "vocabulary.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class CategoricalField:
    """A categorical input field.

    Args:
        name: column name in the prepared Parquet files.
        vocab_size: number of embedding rows, the reserved out-of-vocabulary row included.
    """

    name: str
    vocab_size: int


@dataclass(frozen=True)
class NumericalField:
    """A numerical input field with statistics computed on the training splits."""

    name: str
    mean: float = 0.0
    std: float = 1.0
    minimum: float = 0.0
    maximum: float = 1.0


@dataclass(frozen=True)
class InputSpec:
    """What a model needs to know about its inputs: the shape-relevant part of a schema.

    Args:
        vocab_sizes: embedding rows per categorical field (length F).
        num_numerical: number of numerical fields (N).
        tasks: task label names, in order (length T).
    """

    vocab_sizes: tuple[int, ...]
    num_numerical: int
    tasks: tuple[str, ...]

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True)
class Schema:
    """Fields, tasks, group key and domains of a prepared dataset.

    Example:
        >>> schema = Schema(
        ...     categorical=(CategoricalField("c1", 5),),
        ...     numerical=(NumericalField("n1"),),
        ...     tasks=("click", "conversion"),
        ...     domains=("A", "B"),
        ... )
        >>> schema.input_spec().vocab_sizes
        (5,)
        >>> Schema.from_dict(schema.to_dict()) == schema
        True
    """

    categorical: tuple[CategoricalField, ...]
    numerical: tuple[NumericalField, ...]
    tasks: tuple[str, ...]
    group_key: str = "search_id"
    domains: tuple[str, ...] = ()
    source_format: str = "processed"
    vocabulary_digest: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    version: int = SCHEMA_VERSION

    @property
    def categorical_names(self) -> list[str]:
        return [item.name for item in self.categorical]

    @property
    def numerical_names(self) -> list[str]:
        return [item.name for item in self.numerical]

    @property
    def feature_columns(self) -> list[str]:
        return self.categorical_names + self.numerical_names

    def input_spec(self) -> InputSpec:
        return InputSpec(
            vocab_sizes=tuple(item.vocab_size for item in self.categorical),
            num_numerical=len(self.numerical),
            tasks=tuple(self.tasks),
        )

    def digest(self) -> str:
        """A short hash of everything that decides a model's shapes and input meaning.

        Two schemas with the same digest accept each other's checkpoints. Numerical
        statistics and domain names are left out: they do not change a model's inputs.
        """
        payload = {
            "categorical": [[item.name, item.vocab_size] for item in self.categorical],
            "numerical": self.numerical_names,
            "tasks": list(self.tasks),
            "vocabulary_digest": self.vocabulary_digest,
        }
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["digest"] = self.digest()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        try:
            return cls(
                categorical=tuple(CategoricalField(**item) for item in data["categorical"]),
                numerical=tuple(NumericalField(**item) for item in data["numerical"]),
                tasks=tuple(data["tasks"]),
                group_key=data.get("group_key", "search_id"),
                domains=tuple(data.get("domains", ())),
                source_format=data.get("source_format", "processed"),
                vocabulary_digest=data.get("vocabulary_digest", ""),
                extra=dict(data.get("extra", {})),
                version=int(data.get("version", SCHEMA_VERSION)),
            )
        except (KeyError, TypeError) as error:
            raise DataError(
                f"schema is missing or has a malformed entry: {error}; "
                "re-create the dataset with `taa prepare`"
            ) from error

    def save(self, directory: str | Path) -> Path:
        """Write ``schema.json`` into ``directory`` atomically and return its path."""
        from taa.io import atomic_write_text

        path = Path(directory) / SCHEMA_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Schema:
        """Read ``schema.json`` from a prepared dataset folder (or the file itself)."""
        path = Path(directory)
        if path.is_dir():
            path = path / SCHEMA_FILE
        if not path.is_file():
            raise DataError(f"{path}: no schema file; point to a folder made by `taa prepare`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: not valid JSON ({error}); re-run `taa prepare`") from error
        return cls.from_dict(data)

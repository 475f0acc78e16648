"""Tiny prepared datasets and model sizes shared by the training tests (no tests here).

A dataset has a source domain ``S`` and a target domain ``T`` with labels that depend on
the inputs, so a model can learn something in a few steps. The target is shifted: its
numerical features have another mean and its categories other frequencies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from taa.data.schema import CategoricalField, NumericalField, Schema
from taa.models.base import ModelConfig

VOCAB = (6, 5, 4)
NUMERICAL = 4
TASKS = ("click", "conversion")

TINY_MODEL = ModelConfig(
    embedding_dim=4,
    expert_hidden=(8,),
    tower_hidden=(4,),
    dropout=0.0,
    num_experts=2,
    ple_shared_experts=1,
    ple_task_experts=1,
    ple_levels=1,
)


def tiny_schema(vocab: tuple[int, ...] = VOCAB, vocabulary_digest: str = "v1") -> Schema:
    return Schema(
        categorical=tuple(
            CategoricalField(f"categorical_{i + 1}", size) for i, size in enumerate(vocab)
        ),
        numerical=tuple(NumericalField(f"numerical_{i + 1}") for i in range(NUMERICAL)),
        tasks=TASKS,
        domains=("S", "T"),
        vocabulary_digest=vocabulary_digest,
    )


def make_rows(rows: int, seed: int, shift: float = 0.0, first_group: int = 0) -> dict:
    """Columns of ``rows`` labelled rows; ``shift`` moves the inputs (not the labelling)."""
    generator = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {
        "search_id": (first_group + np.arange(rows) // 4).astype(np.int64)
    }
    signal = np.zeros(rows)
    for index, size in enumerate(VOCAB):
        weights = np.linspace(1.0, 1.0 + 3.0 * shift, size - 1)[:: 1 if index % 2 else -1]
        codes = 1 + generator.choice(size - 1, size=rows, p=weights / weights.sum())
        columns[f"categorical_{index + 1}"] = codes.astype(np.int32)
        signal += 0.6 * np.cos(codes * (index + 1))
    for index in range(NUMERICAL):
        values = generator.normal(shift * (1.5 if index < 2 else -1.0), 1.0, size=rows)
        columns[f"numerical_{index + 1}"] = values.astype(np.float32)
        signal += (0.8 if index % 2 == 0 else -0.5) * values
    click = generator.random(rows) < 1.0 / (1.0 + np.exp(-(signal - 0.5)))
    conversion = click & (generator.random(rows) < 1.0 / (1.0 + np.exp(-(signal - 1.0))))
    columns["click"] = click.astype(np.int8)
    columns["conversion"] = conversion.astype(np.int8)
    return columns


def write_split(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def make_dataset(
    root: Path,
    *,
    source_rows: int = 400,
    target_rows: int = 300,
    sample_rows: int = 60,
    valid_rows: int = 40,
    shift: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write a prepared dataset with ``S/{train,test}``, ``T/{train,test}`` and the target
    sample ``T/samples/s0/{train,valid}``; return its folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    tiny_schema().save(root)
    write_split(root / "S" / "train.parquet", make_rows(source_rows, seed))
    write_split(root / "S" / "test.parquet", make_rows(200, seed + 1, first_group=10_000))
    write_split(root / "T" / "train.parquet", make_rows(target_rows, seed + 2, shift))
    write_split(root / "T" / "test.parquet", make_rows(200, seed + 3, shift, 20_000))
    write_split(
        root / "T" / "samples" / "s0" / "train.parquet",
        make_rows(sample_rows, seed + 4, shift, 30_000),
    )
    write_split(
        root / "T" / "samples" / "s0" / "valid.parquet",
        make_rows(valid_rows, seed + 5, shift, 40_000),
    )
    return root

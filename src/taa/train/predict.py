"""``taa predict``: per-task probabilities for every row of a file.

Scoring is split in two so that other model formats plug in without touching the rest:

* a :class:`Scorer` maps encoded inputs (categorical ``[B, F]``, numerical ``[B, N]``)
  to probabilities ``[B, T]``; :class:`TorchScorer` wraps a checkpoint and
  ``taa.export.ExportedScorer`` an exported ONNX or TorchScript file;
* :func:`predict` reads the input through ``taa.data.encode.load_for_scoring`` (with the
  dataset's vocabulary), feeds it to a scorer in batches and writes the input's id
  columns with one ``<task>_probability`` column per task, as CSV or Parquet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from taa.data.batches import TensorSplit, epoch_slices
from taa.data.schema import Schema
from taa.errors import ConfigError, DataError, SchemaMismatchError
from taa.io import atomic_path
from taa.models.base import MultiTaskModel
from taa.train.checkpoint import load_checkpoint
from taa.train.config import PredictConfig
from taa.train.runtime import apply_threads, autocast, resolve_device

logger = logging.getLogger(__name__)

PROBABILITY_SUFFIX = "_probability"


class Scorer(Protocol):
    """Anything that turns encoded rows into per-task probabilities.

    Attributes:
        tasks: task names, in the order of the probability columns (length T).
        schema_digest: digest of the schema the model was trained on.
    """

    tasks: tuple[str, ...]
    schema_digest: str

    def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> np.ndarray:
        """Probabilities ``[B, T]`` (float64) of ``categorical [B, F]``, ``numerical [B, N]``."""
        ...


class TorchScorer:
    """A :class:`Scorer` over a PyTorch model, run under ``torch.inference_mode``.

    Example:
        >>> scorer = TorchScorer.from_checkpoint("runs/p/checkpoints/best.pt")  # doctest: +SKIP
        >>> scorer(categorical, numerical).shape  # doctest: +SKIP
        (1024, 2)
    """

    def __init__(
        self,
        model: MultiTaskModel,
        schema_digest: str,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self.model = model.eval()
        self.tasks = tuple(model.spec.tasks)
        self.schema_digest = schema_digest
        self.device = torch.device(device)
        self.precision = precision

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: torch.device | str = "cpu", precision: str = "fp32"
    ) -> TorchScorer:
        model, metadata = load_checkpoint(path, map_location=device)
        return cls(model, metadata["schema_digest"], device, precision)

    def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), autocast(self.device, self.precision):
            output = self.model(categorical.to(self.device), numerical.to(self.device))
        return output.probabilities.float().cpu().numpy().astype(np.float64)


def load_scorer(
    path: str | Path, device: torch.device, precision: str = "fp32", threads: int = 0
) -> Scorer:
    """The scorer for a model file.

    A file written by ``taa export`` (``.onnx``, or a TorchScript archive carrying taa's
    metadata) is scored by :class:`taa.export.ExportedScorer`; a ``.pt`` training
    checkpoint by :class:`TorchScorer`.
    """
    from taa.export import ExportedScorer, export_format_of

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"option --model: {path} does not exist; pass a run's checkpoints/best.pt or a "
            "file made by `taa export`"
        )
    if export_format_of(path) is not None:
        return ExportedScorer.load(path, threads=threads)
    if path.suffix.lower() != ".pt":
        raise ConfigError(
            f"option --model got {str(path)!r}; allowed: a checkpoint (.pt) or a model made "
            "by `taa export` (.onnx, TorchScript .pt)"
        )
    return TorchScorer.from_checkpoint(path, device, precision)


def score_split(scorer: Scorer, split: TensorSplit, batch_size: int = 8192) -> np.ndarray:
    """Probabilities ``[R, T]`` of every row of ``split``, scored in batches."""
    pieces = [
        scorer(split.categorical[start:stop], split.numerical[start:stop])
        for start, stop in epoch_slices(len(split), batch_size, training=False)
    ]
    if not pieces:
        return np.zeros((0, len(scorer.tasks)))
    return np.concatenate(pieces)


def check_output_file(path: str | Path, option: str, *, overwrite: bool = False) -> Path:
    """Refuse an output path that cannot be written, before any work is done.

    Args:
        path: the file to write.
        option: the option naming it in messages (``--output``, ``--out``).
        overwrite: an existing file may be replaced.

    Raises:
        ConfigError: the path is a folder, exists (without ``overwrite``), lies under a
            file, or its nearest existing folder cannot be written to.
    """
    import os
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"option {option} got {str(path)!r}, which is a folder; give a file name, such "
            f"as {str(path / ('scores' + (path.suffix or '.csv')))!r}"
        )
    if path.exists() and not overwrite:
        raise ConfigError(
            f"option {option}: {path} already exists; pass --overwrite to replace it or "
            "choose another name"
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(
            f"option {option} got {str(path)!r}, but {str(folder)!r} is a file, not a folder; "
            "choose a path inside a folder"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".taa-probe.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(
            f"option {option} got {str(path)!r}, but folder {str(folder)!r} cannot be written "
            f"to ({error.strerror or error}); choose a path in a writable folder"
        ) from error
    return path


def write_scores(
    path: str | Path, ids: dict[str, Any], tasks: tuple[str, ...], probabilities: np.ndarray
) -> Path:
    """Write id columns and ``<task>_probability`` columns atomically (CSV or Parquet)."""
    import pyarrow as pa

    path = Path(path)
    columns: dict[str, Any] = {name: np.asarray(values) for name, values in ids.items()}
    for index, task in enumerate(tasks):
        name = task + PROBABILITY_SUFFIX
        if name in columns:
            raise DataError(
                f"input id column {name!r} clashes with the output column of task {task!r}; "
                "rename that column in the input"
            )
        columns[name] = probabilities[:, index]
    rows = {len(values) for values in columns.values()}
    if len(rows) > 1:
        raise DataError(f"id columns and scores differ in length: {sorted(rows)} rows")
    table = pa.table(columns)
    try:
        _write_table(path, table)
    except OSError as error:
        raise ConfigError(
            f"option --output: cannot write {str(path)!r} ({error.strerror or error}); "
            "choose a file name in a writable folder"
        ) from error
    return path


def _write_table(path: Path, table: Any) -> None:
    with atomic_path(path) as temporary:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, temporary)
        elif path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, temporary)
        else:
            raise ConfigError(
                f"option --output got {str(path)!r}; allowed: a .csv or .parquet file name"
            )


def predict(config: PredictConfig, scorer: Scorer | None = None) -> Path:
    """Score ``config.input`` and write ``config.output``; return the output path.

    Args:
        config: see :class:`~taa.train.config.PredictConfig`.
        scorer: use this scorer instead of loading ``config.model``.

    Raises:
        SchemaMismatchError: the model was trained on another schema than the dataset's.
    """
    from taa.data.encode import load_for_scoring

    check_output_file(config.output, "--output", overwrite=config.overwrite)
    apply_threads(config.threads)
    device = resolve_device(config.device)
    schema = Schema.load(config.dataset)
    scorer = scorer or load_scorer(config.model, device, config.precision, config.threads)
    if scorer.schema_digest != schema.digest():
        raise SchemaMismatchError(
            f"model {config.model} was trained on schema {scorer.schema_digest} but dataset "
            f"{config.dataset} has schema {schema.digest()}; pass the dataset folder the "
            "model was trained with (its vocabulary encodes the input)"
        )
    scoring = load_for_scoring(config.input, config.dataset, layout=config.layout)
    probabilities = score_split(scorer, scoring.split, config.batch_size)
    write_scores(config.output, dict(scoring.ids), scorer.tasks, probabilities)
    logger.info("scored %d rows of %s -> %s", len(probabilities), config.input, config.output)
    return config.output

"""Export a trained model to ONNX or TorchScript with its schema inside, and score with it.

An exported model maps categorical indices ``int64 [B, F]`` (input ``categorical``) and
numerical features ``float32 [B, N]`` (input ``numerical``) to per-task probabilities
``float32 [B, T]`` (output ``probabilities``); the batch axis is dynamic. Indices outside a
field's vocabulary are read as the out-of-vocabulary index 0 inside the graph, exactly as
the PyTorch model does, so a serving system that forwards raw indices gets the same scores.

The dataset schema travels inside the file, so an exported model can be checked against
the dataset whose vocabulary encodes its input:

* ONNX: ``metadata_props`` entries ``taa.schema`` (the ``schema.json`` text),
  ``taa.schema_digest``, ``taa.vocabulary_digest``, ``taa.tasks`` (JSON list),
  ``taa.model_name`` and ``taa.export`` (JSON: model config, inputs, output, versions);
* TorchScript: the same entries as JSON in the archive's extra file ``taa_metadata.json``
  and the schema text in ``schema.json``.

:func:`read_export_metadata` reads them back from either, and :class:`ExportedModel` scores
rows with onnxruntime or ``torch.jit`` (``taa predict`` uses it for ``.onnx`` and TorchScript
files).

Example:
    >>> result = export_checkpoint(ExportConfig(source="runs/p", out="m.onnx"))  # doctest: +SKIP
    >>> ExportedModel.load("m.onnx").tasks  # doctest: +SKIP
    ('click', 'conversion')
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from taa import __version__
from taa.data.schema import SCHEMA_FILE, Schema
from taa.errors import ConfigError, DataError, SchemaMismatchError, TaaError
from taa.io import atomic_path
from taa.models.base import MultiTaskModel

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "torchscript")
ONNX_EXPORTERS = ("dynamo", "legacy")
EXPORT_FORMAT_NAME = "taa-export"
EXPORT_FORMAT_VERSION = 1
TORCHSCRIPT_METADATA = "taa_metadata.json"
CHECK_TOLERANCE = 1e-5
DEFAULT_OPSET = 18


@dataclass(kw_only=True)
class ExportConfig:
    """Settings of ``taa export``.

    Example:
        >>> config = ExportConfig(source="runs/adapt-mmoe", out="model.onnx")
        >>> config.format, config.onnx_exporter, config.check
        ('onnx', 'dynamo', True)
    """

    source: Path = field(
        metadata={"help": "A run folder (uses checkpoints/best.pt) or a checkpoint file."}
    )
    out: Path = field(metadata={"help": "File to write (.onnx, or .pt for TorchScript)."})
    format: str = field(
        default="onnx",
        metadata={
            "help": "onnx (onnxruntime) or torchscript (torch.jit).",
            "choices": list(EXPORT_FORMATS),
        },
    )
    dataset: Path | None = field(
        default=None,
        metadata={
            "help": "Prepared dataset whose schema.json to embed; default the run folder's "
            "schema.json. Must be the schema the model was trained on."
        },
    )
    onnx_exporter: str = field(
        default="dynamo",
        metadata={
            "help": "dynamo: torch.export-based ONNX exporter (maintained); legacy: the "
            "older TorchScript-based one (faster to run, deprecated by PyTorch).",
            "choices": list(ONNX_EXPORTERS),
        },
    )
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset version."})
    check: bool = field(
        default=True,
        metadata={
            "help": "Score a probe batch (out-of-range indices included) with the exported file "
            f"and with PyTorch and refuse a difference above {CHECK_TOLERANCE}."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing --out file."})

    def __post_init__(self) -> None:
        self.source = Path(self.source)
        self.out = Path(self.out)
        if self.dataset is not None:
            self.dataset = Path(self.dataset)
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(
                f"option --format got {self.format!r}; allowed: {list(EXPORT_FORMATS)}"
            )
        if self.onnx_exporter not in ONNX_EXPORTERS:
            raise ConfigError(
                f"option --onnx-exporter got {self.onnx_exporter!r}; allowed: "
                f"{list(ONNX_EXPORTERS)}"
            )
        if not 13 <= self.opset <= 23:
            raise ConfigError(f"option --opset got {self.opset}; allowed: 13 to 23 (default 18)")


@dataclass
class ExportResult:
    """What :func:`export_checkpoint` wrote.

    Attributes:
        path: the exported file.
        format: ``onnx`` or ``torchscript``.
        metadata: the entries embedded in the file (see the module docstring).
        max_difference: largest absolute probability difference against PyTorch on the
            probe batch, or None when the check was skipped.
    """

    path: Path
    format: str
    metadata: dict[str, str]
    max_difference: float | None


class ProbabilityModel(nn.Module):
    """A ranker reduced to what serving needs: ``(categorical, numerical) -> probabilities``."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        """Per-task probabilities ``[B, T]`` for indices ``[B, F]`` and features ``[B, N]``."""
        return self.model(categorical, numerical).probabilities


def resolve_source(source: Path, dataset: Path | None) -> tuple[Path, Path]:
    """The checkpoint file and the schema file for a run folder or a checkpoint path."""
    if source.is_dir():
        checkpoint = source / "checkpoints" / "best.pt"
        run_dir: Path | None = source
    else:
        checkpoint = source
        run_dir = source.parent.parent if source.parent.name == "checkpoints" else None
    if not checkpoint.is_file():
        raise DataError(
            f"{checkpoint}: no checkpoint to export; pass a run folder holding "
            "checkpoints/best.pt or the checkpoint file itself"
        )
    if dataset is not None:
        schema_path = dataset / SCHEMA_FILE if dataset.is_dir() else dataset
    elif run_dir is not None and (run_dir / SCHEMA_FILE).is_file():
        schema_path = run_dir / SCHEMA_FILE
    else:
        raise ConfigError(
            f"{checkpoint}: no schema.json found next to it (looked in its run folder); "
            "pass --dataset with the prepared dataset the model was trained on"
        )
    return checkpoint, schema_path


def build_metadata(
    model: MultiTaskModel, model_name: str, schema: Schema, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """The string entries embedded in an exported file (see the module docstring)."""
    fields_count = len(schema.categorical)
    numerical_count = len(schema.numerical)
    description = {
        "format": EXPORT_FORMAT_NAME,
        "format_version": EXPORT_FORMAT_VERSION,
        "taa_version": __version__,
        "torch_version": torch.__version__,
        "model_name": model_name,
        "model_config": json.loads(json.dumps(model.config.to_dict())),
        "inputs": {
            "categorical": {
                "dtype": "int64",
                "shape": ["batch", fields_count],
                "fields": schema.categorical_names,
            },
            "numerical": {
                "dtype": "float32",
                "shape": ["batch", numerical_count],
                "fields": schema.numerical_names,
            },
        },
        "output": {
            "name": "probabilities",
            "dtype": "float32",
            "shape": ["batch", len(schema.tasks)],
        },
        "oov_index": 0,
        "source": extra or {},
    }
    return {
        "taa.schema": json.dumps(schema.to_dict(), indent=2),
        "taa.schema_digest": schema.digest(),
        "taa.vocabulary_digest": schema.vocabulary_digest,
        "taa.tasks": json.dumps(list(schema.tasks)),
        "taa.model_name": model_name,
        "taa.export": json.dumps(description, default=str),
    }


def probe_batch(schema: Schema, rows: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch for checking an export: indices from -2 to ``vocab_size + 2`` (out-of-range
    ones included), numerical features uniform in [0, 1].

    Returns:
        categorical int64 ``[rows, F]`` and numerical float32 ``[rows, N]``.
    """
    generator = torch.Generator().manual_seed(seed)
    columns = [
        torch.randint(-2, item.vocab_size + 3, (rows,), generator=generator)
        for item in schema.categorical
    ]
    categorical = (
        torch.stack(columns, dim=1) if columns else torch.zeros(rows, 0, dtype=torch.int64)
    )
    numerical = torch.rand(rows, len(schema.numerical), generator=generator)
    return categorical, numerical


@contextlib.contextmanager
def _quiet_logger(*names: str) -> Iterator[None]:
    """Hide library loggers' messages below ERROR for a block: torch's exporter lists every
    optional operator library it did not find, and onnxscript and onnx_ir log each graph
    rewrite at INFO."""
    targets = [logging.getLogger(name) for name in names]
    levels = [target.level for target in targets]
    for target in targets:
        target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for target, level in zip(targets, levels, strict=True):
            target.setLevel(level)


def _export_onnx(
    module: ProbabilityModel,
    example: tuple[torch.Tensor, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
    *,
    exporter: str,
    opset: int,
) -> None:
    import onnx

    names = {"input_names": ["categorical", "numerical"], "output_names": ["probabilities"]}
    with warnings.catch_warnings(), _quiet_logger("torch.onnx", "onnxscript", "onnx_ir"):
        # The shape checks in the models read static sizes while tracing; that is intended.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # Both inputs share the one "batch" axis, which the exporter reports as a rename.
        warnings.filterwarnings("ignore", message=r".*axis name: batch will not be used")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                module,
                example,
                dynamic_shapes={"categorical": {0: batch}, "numerical": {0: batch}},
                opset_version=opset,
                dynamo=True,
                verbose=False,
                **names,
            )
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                example,
                buffer,
                dynamic_axes={
                    name: {0: "batch"} for name in [*names["input_names"], "probabilities"]
                },
                opset_version=min(opset, 17),
                dynamo=False,
                **names,
            )
            proto = onnx.load_from_string(buffer.getvalue())
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as temporary:
        onnx.save(proto, str(temporary))


def _export_torchscript(
    module: ProbabilityModel,
    example: tuple[torch.Tensor, torch.Tensor],
    path: Path,
    metadata: dict[str, str],
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
    extra = {TORCHSCRIPT_METADATA: json.dumps(metadata), SCHEMA_FILE: metadata["taa.schema"]}
    with atomic_path(path) as temporary, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(traced, str(temporary), _extra_files=extra)


def export_model(
    model: MultiTaskModel,
    model_name: str,
    schema: Schema,
    path: str | Path,
    *,
    format: str = "onnx",
    onnx_exporter: str = "dynamo",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    source_metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` (trained for ``schema``) to ``path`` atomically.

    Args:
        model: the ranker; exported in eval mode on the CPU in float32.
        model_name: its registry name, embedded in the file.
        schema: the dataset schema the model was trained on, embedded in the file.
        path: output file.
        format: ``onnx`` or ``torchscript``.
        onnx_exporter: ``dynamo`` or ``legacy`` (see :class:`ExportConfig`).
        opset: ONNX opset version.
        check: compare the exported file with PyTorch on :func:`probe_batch`.
        source_metadata: where the model came from (method, domains), embedded as is.

    Returns:
        The :class:`ExportResult`.
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"option --format got {format!r}; allowed: {list(EXPORT_FORMATS)}")
    if model.spec.vocab_sizes != schema.input_spec().vocab_sizes or tuple(
        model.spec.tasks
    ) != tuple(schema.tasks):
        raise SchemaMismatchError(
            f"model inputs {model.spec} do not match the schema's {schema.input_spec()}; "
            "embed the schema of the dataset the model was trained on"
        )
    path = Path(path)
    module = ProbabilityModel(model).to("cpu").float().eval()
    example = probe_batch(schema, rows=4)
    metadata = build_metadata(model, model_name, schema, source_metadata)
    if format == "onnx":
        _export_onnx(module, example, path, metadata, exporter=onnx_exporter, opset=opset)
    else:
        _export_torchscript(module, example, path, metadata)
    logger.info("exported %s as %s to %s", model_name, format, path)

    difference = None
    if check:
        categorical, numerical = probe_batch(schema, rows=64, seed=1)
        with torch.no_grad():
            expected = module(categorical, numerical)
        exported = ExportedModel.load(path)(categorical, numerical)
        difference = float((exported - expected).abs().max()) if len(expected) else 0.0
        if not difference <= CHECK_TOLERANCE:
            path.unlink(missing_ok=True)
            raise TaaError(
                f"{path}: the exported {format} model differs from PyTorch by {difference:.3g} "
                f"(allowed {CHECK_TOLERANCE}) on a probe batch; the file was removed. Try "
                "--onnx-exporter legacy or --format torchscript, and report the model name"
            )
        logger.info("exported model matches PyTorch within %.3g", difference)
    return ExportResult(path, format, metadata, difference)


def export_checkpoint(config: ExportConfig) -> ExportResult:
    """``taa export``: load a run's best checkpoint and export it with the run's schema."""
    from taa.train.checkpoint import check_schema, load_checkpoint
    from taa.train.predict import check_output_file

    check_output_file(config.out, "--out", overwrite=config.overwrite)
    checkpoint, schema_path = resolve_source(config.source, config.dataset)
    schema = Schema.load(schema_path)
    model, info = load_checkpoint(checkpoint)
    check_schema(info, schema, checkpoint=checkpoint, dataset=schema_path.parent)
    source = {"checkpoint": str(checkpoint), **dict(info.get("metadata", {}))}
    return export_model(
        model,
        info["model_name"],
        schema,
        config.out,
        format=config.format,
        onnx_exporter=config.onnx_exporter,
        opset=config.opset,
        check=config.check,
        source_metadata=source,
    )


def export_format_of(path: str | Path) -> str | None:
    """``onnx`` or ``torchscript`` for a file made by :func:`export_model`, None otherwise.

    A ``.onnx`` suffix means ONNX; a zip archive holding ``taa_metadata.json`` is a
    TorchScript export (a training checkpoint, also a zip, lacks it).
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith(f"extra/{TORCHSCRIPT_METADATA}") for name in archive.namelist()):
                return "torchscript"
    return None


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The entries embedded by :func:`export_model` in an ONNX or TorchScript file."""
    path = Path(path)
    format = export_format_of(path)
    if not path.is_file() or format is None:
        raise DataError(
            f"{path}: not a model exported by `taa export` (expected a .onnx file or a "
            "TorchScript archive with taa metadata); export one with `taa export`"
        )
    if format == "onnx":
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as error:  # onnx raises DecodeError and others for foreign files
            raise DataError(f"{path}: not a readable ONNX file ({error})") from error
        metadata = {entry.key: entry.value for entry in proto.metadata_props}
    else:
        with zipfile.ZipFile(path) as archive:
            name = next(
                n for n in archive.namelist() if n.endswith(f"extra/{TORCHSCRIPT_METADATA}")
            )
            metadata = json.loads(archive.read(name))
    missing = [
        key for key in ("taa.schema", "taa.schema_digest", "taa.tasks") if key not in metadata
    ]
    if missing:
        raise DataError(
            f"{path}: exported model lacks the taa entries {missing}; re-export it with "
            "`taa export`"
        )
    return metadata


class ExportedModel:
    """An exported model, ready to score: ``model(categorical, numerical) -> [B, T]``.

    ONNX files run in onnxruntime (CPU), TorchScript files in ``torch.jit``. Rows are
    scored ``batch_size`` at a time. Inputs are checked against the embedded schema
    (column counts), since a traced graph cannot say which input is wrong.

    Attributes:
        path: the file.
        format: ``onnx`` or ``torchscript``.
        metadata: the embedded entries; ``schema`` and ``tasks`` are parsed from them.
    """

    def __init__(self, path: Path, format: str, metadata: dict[str, str], runner: Any) -> None:
        self.path = path
        self.format = format
        self.metadata = metadata
        self.schema = Schema.from_dict(json.loads(metadata["taa.schema"]))
        self.tasks = tuple(json.loads(metadata["taa.tasks"]))
        self.model_name = metadata.get("taa.model_name", "")
        self._runner = runner

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 0) -> ExportedModel:
        """Open an exported file (see :func:`read_export_metadata`).

        Args:
            path: a ``.onnx`` file or a TorchScript archive made by ``taa export``.
            threads: onnxruntime intra-op threads; 0 lets it choose.
        """
        path = Path(path)
        metadata = read_export_metadata(path)
        format = export_format_of(path)
        if format == "onnx":
            try:
                import onnxruntime
            except ImportError as error:
                raise ConfigError(
                    f"{path}: scoring an ONNX model needs onnxruntime ({error}); install it "
                    "with `pip install 'taa[export]'`"
                ) from error
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            runner: Any = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        else:
            with warnings.catch_warnings():
                # TorchScript is deprecated in favour of torch.export, but it is the format
                # asked for here and torch.jit still loads it.
                warnings.simplefilter("ignore", DeprecationWarning)
                runner = torch.jit.load(str(path), map_location="cpu").eval()
        return cls(path, str(format), metadata, runner)

    def check_schema(self, schema: Schema, dataset: str | Path) -> None:
        """Refuse a dataset whose schema differs from the one embedded at export.

        Raises:
            SchemaMismatchError: naming both digests and the fix.
        """
        embedded = self.metadata["taa.schema_digest"]
        if schema.digest() != embedded:
            raise SchemaMismatchError(
                f"exported model {self.path} was made for schema {embedded} but dataset "
                f"{dataset} has schema {schema.digest()}; score with the dataset the model "
                "was trained on (same fields, vocabulary and tasks) or re-export a model "
                "trained on this dataset"
            )

    def __call__(
        self,
        categorical: torch.Tensor | np.ndarray,
        numerical: torch.Tensor | np.ndarray,
        *,
        batch_size: int = 65_536,
    ) -> torch.Tensor:
        """Probabilities ``float32 [B, T]`` for indices ``[B, F]`` and features ``[B, N]``."""
        categorical = torch.as_tensor(categorical, dtype=torch.int64)
        numerical = torch.as_tensor(numerical, dtype=torch.float32)
        fields, features = len(self.schema.categorical), len(self.schema.numerical)
        if categorical.dim() != 2 or categorical.shape[1] != fields:
            raise DataError(
                f"categorical input has shape {tuple(categorical.shape)}; {self.path} expects "
                f"[B, {fields}] (columns {self.schema.categorical_names})"
            )
        if (
            numerical.dim() != 2
            or numerical.shape[1] != features
            or len(numerical) != len(categorical)
        ):
            raise DataError(
                f"numerical input has shape {tuple(numerical.shape)}; {self.path} expects "
                f"[{len(categorical)}, {features}] (one row per categorical row)"
            )
        pieces = []
        for start in range(0, len(categorical), batch_size):
            rows = slice(start, start + batch_size)
            pieces.append(self._score(categorical[rows], numerical[rows]))
        if not pieces:
            return torch.zeros(0, len(self.tasks))
        return torch.cat(pieces)

    def _score(self, categorical: torch.Tensor, numerical: torch.Tensor) -> torch.Tensor:
        if self.format == "onnx":
            feeds = {
                "categorical": categorical.contiguous().numpy(),
                "numerical": numerical.contiguous().numpy(),
            }
            return torch.from_numpy(self._runner.run(["probabilities"], feeds)[0])
        with torch.no_grad():
            return self._runner(categorical, numerical)


class ExportedScorer:
    """An :class:`ExportedModel` as ``taa predict``'s scorer (``tasks``, ``schema_digest``,
    ``scorer(categorical, numerical) -> float64 [B, T]``)."""

    def __init__(self, model: ExportedModel) -> None:
        self.model = model
        self.tasks = model.tasks
        self.schema_digest = model.metadata["taa.schema_digest"]

    @classmethod
    def load(cls, path: str | Path, threads: int = 0) -> ExportedScorer:
        return cls(ExportedModel.load(path, threads=threads))

    def __call__(self, categorical: torch.Tensor, numerical: torch.Tensor) -> np.ndarray:
        return self.model(categorical.cpu(), numerical.cpu()).numpy().astype(np.float64)

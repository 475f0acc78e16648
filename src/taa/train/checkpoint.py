"""Model checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dictionary of tensors, dicts, lists, strings and numbers:

* ``format``, ``format_version``: ``"taa-checkpoint"``, 1;
* ``model_name``, ``model_config`` (a :class:`~taa.models.base.ModelConfig` as a dict);
* ``input_spec``: ``vocab_sizes``, ``num_numerical``, ``tasks``, so a model is rebuilt
  without its dataset;
* ``schema_digest``: :meth:`~taa.data.schema.Schema.digest` of the data it was trained on;
* ``state_dict``: the model's tensors (on CPU);
* ``metadata``: where it came from (method, domains, epoch, validation metrics, version).

The training state of a run (``last.pt``: optimizers, critics, sampler and random
generator states) uses the same rules, so nothing in a run folder needs pickle.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from taa.data.schema import InputSpec, Schema
from taa.errors import DataError, SchemaMismatchError
from taa.io import atomic_path
from taa.models.base import ModelConfig, MultiTaskModel, build_model

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "taa-checkpoint"
CHECKPOINT_VERSION = 1


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def model_record(model: MultiTaskModel, model_name: str, schema_digest: str) -> dict[str, Any]:
    """Everything but the weights that is needed to rebuild ``model``."""
    spec = model.spec
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_name": model_name,
        "model_config": _plain(model.config.to_dict()),
        "input_spec": {
            "vocab_sizes": list(spec.vocab_sizes),
            "num_numerical": int(spec.num_numerical),
            "tasks": list(spec.tasks),
        },
        "schema_digest": schema_digest,
    }


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s state with every tensor on the CPU."""
    return {key: value.detach().to("cpu").clone() for key, value in module.state_dict().items()}


def save_checkpoint(
    path: str | Path,
    model: MultiTaskModel,
    model_name: str,
    schema_digest: str,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a checkpoint at ``path`` atomically and return the path."""
    payload = model_record(model, model_name, schema_digest)
    payload["state_dict"] = cpu_state_dict(model)
    payload["metadata"] = _plain(metadata or {})
    save_state(path, payload)
    return Path(path)


def save_state(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to ``path`` atomically (a crash leaves the old file or none)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as temporary:
        temporary.write_bytes(buffer.getvalue())


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such checkpoint; point to a run's checkpoints/best.pt "
            "(made by `taa pretrain` or `taa adapt`)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        # torch's own message may advise unsafe loading: keep it out of ours (DEBUG only)
        logger.debug("%s: torch.load failed: %r", path, error)
        raise DataError(
            f"{path}: not a taa checkpoint, or the file is damaged ({type(error).__name__}); "
            "re-create it with `taa pretrain` or `taa adapt`"
        ) from error
    if not isinstance(payload, dict):
        raise DataError(f"{path}: holds a {type(payload).__name__}, not a taa checkpoint dict")
    return payload


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[MultiTaskModel, dict[str, Any]]:
    """Rebuild the model saved at ``path``; return it (in eval mode) and its metadata.

    Args:
        path: a checkpoint written by :func:`save_checkpoint` (a run's ``best.pt``).
        map_location: device for the weights.

    Returns:
        ``(model, metadata)`` where ``metadata`` is the checkpoint without its weights:
        ``model_name``, ``model_config``, ``input_spec``, ``schema_digest`` and the
        run's ``metadata`` dict.

    Example:
        >>> model, info = load_checkpoint("runs/p/checkpoints/best.pt")  # doctest: +SKIP
        >>> info["model_name"], info["schema_digest"]  # doctest: +SKIP
        ('mmoe', '3f2a...')
    """
    payload = load_state(path, map_location)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise DataError(
            f"{path}: format is {payload.get('format')!r}, not {CHECKPOINT_FORMAT!r}; "
            "pass a model checkpoint (checkpoints/best.pt), not a training state (last.pt)"
        )
    try:
        spec = InputSpec(
            vocab_sizes=tuple(payload["input_spec"]["vocab_sizes"]),
            num_numerical=int(payload["input_spec"]["num_numerical"]),
            tasks=tuple(payload["input_spec"]["tasks"]),
        )
        config = ModelConfig.from_dict(payload["model_config"])
        model = build_model(payload["model_name"], spec, config)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as error:
        raise DataError(
            f"{path}: checkpoint does not match its own model description ({error}); "
            "re-create it with this version of taa"
        ) from error
    model.to(map_location).eval()
    metadata = {key: value for key, value in payload.items() if key != "state_dict"}
    return model, metadata


def check_schema(
    metadata: dict[str, Any], schema: Schema, *, checkpoint: str | Path, dataset: str | Path
) -> None:
    """Refuse a checkpoint made for another schema than ``schema``.

    Raises:
        SchemaMismatchError: naming both digests and the fix.
    """
    expected = schema.digest()
    found = metadata.get("schema_digest")
    if found != expected:
        raise SchemaMismatchError(
            f"checkpoint {checkpoint} was trained on schema {found} but dataset {dataset} has "
            f"schema {expected}; use the dataset the model was trained on (same fields, "
            "vocabulary and tasks) or retrain the model on this dataset"
        )

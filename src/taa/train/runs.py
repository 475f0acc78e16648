"""Run folders: what every training command leaves behind.

::

    RUN/
      config.json          # resolved config, model name and sizes, schema digest, versions
      schema.json          # copy of the dataset's schema
      metrics.jsonl        # one JSON object per epoch (epoch 0: the starting model)
      final_metrics.json   # best checkpoint on the evaluation split; written last
      checkpoints/best.pt  # best epoch's model (load_checkpoint)
      checkpoints/best.json
      checkpoints/last.pt  # full training state at the last finished epoch (--resume)

Every file is written atomically. A run folder without ``final_metrics.json`` is
unfinished: ``--resume`` continues it from ``last.pt``. See docs/runs.md.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from taa import __version__
from taa.data.schema import Schema
from taa.errors import ConfigError, DataError
from taa.io import atomic_write_json, atomic_write_text
from taa.train.config import RESUMABLE_CHANGES

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`~taa.train.pretrain` and :func:`~taa.train.adapt` return.

    Attributes:
        run_dir: the run folder.
        final_metrics: the content of ``final_metrics.json``.
        best_checkpoint: path of ``checkpoints/best.pt``.
    """

    run_dir: Path
    final_metrics: dict[str, Any]
    best_checkpoint: Path


class RunFolder:
    """Paths and writers of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.json")
    schema_file = property(lambda self: self.path / "schema.json")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    final_file = property(lambda self: self.path / "final_metrics.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_checkpoint = property(lambda self: self.path / "checkpoints" / "best.pt")
    best_info = property(lambda self: self.path / "checkpoints" / "best.json")
    last_state = property(lambda self: self.path / "checkpoints" / "last.pt")

    @classmethod
    def open(
        cls, path: str | Path, record: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> tuple[RunFolder, bool]:
        """Create, replace or reopen a run folder; return it and whether to resume.

        Args:
            path: the run folder.
            record: what ``config.json`` will hold (see :func:`config_record`); on resume
                it must match the stored one except for :data:`RESUMABLE_CHANGES`.
            resume: continue from ``checkpoints/last.pt``.
            overwrite: delete an existing folder first.
        """
        run = cls(path)
        exists = run.path.exists() and any(run.path.iterdir())
        if resume:
            if not run.last_state.is_file():
                raise ConfigError(
                    f"option --resume: {run.last_state} does not exist, so there is nothing to "
                    "resume; drop --resume to start the run"
                )
            run.check_resumable(record)
            return run, True
        if exists and not overwrite:
            raise ConfigError(
                f"run folder {run.path} already exists; pass --resume to continue it, "
                "--overwrite to start over, or choose another --run-dir"
            )
        if exists:
            logger.info("deleting the existing run folder %s (--overwrite)", run.path)
            shutil.rmtree(run.path)
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        return run, False

    def check_resumable(self, record: dict[str, Any]) -> None:
        """Refuse to resume with settings that would change the run's results."""
        try:
            stored = json.loads(self.config_file.read_text())["config"]
        except (OSError, KeyError, json.JSONDecodeError) as error:
            raise DataError(
                f"{self.config_file}: cannot read the stored config ({error}); the run cannot "
                "be resumed, start it again with --overwrite"
            ) from error
        current = record["config"]
        changed = sorted(
            key
            for key in set(stored) | set(current)
            if key not in RESUMABLE_CHANGES and stored.get(key) != current.get(key)
        )
        if changed:
            details = ", ".join(
                f"{key}: stored {stored.get(key)!r}, now {current.get(key)!r}" for key in changed
            )
            raise ConfigError(
                f"option --resume: {self.path} was started with other settings ({details}); "
                "resume with the same options or start a new run (--overwrite)"
            )

    def write_config(self, record: dict[str, Any], schema: Schema) -> None:
        atomic_write_json(self.config_file, record)
        schema.save(self.path)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` with one line per epoch record."""
        lines = "".join(json.dumps(item, allow_nan=True) + "\n" for item in history)
        atomic_write_text(self.metrics_file, lines)

    def write_final(self, final: dict[str, Any]) -> None:
        atomic_write_json(self.final_file, final)

    def read_final(self) -> dict[str, Any]:
        return json.loads(self.final_file.read_text())


def config_record(
    command: str,
    config: dict[str, Any],
    *,
    model_name: str,
    model_config: dict[str, Any],
    schema: Schema,
    device: torch.device,
) -> dict[str, Any]:
    """The content of ``config.json``."""
    return {
        "command": command,
        "config": config,
        "model": model_name,
        "model_config": model_config,
        "schema_digest": schema.digest(),
        "tasks": list(schema.tasks),
        "device": str(device),
        "taa_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

"""Optional experiment tracking: per-epoch metrics to TensorBoard event files in the run folder.

Tracking is off by default (``--track none``): a run folder's ``metrics.jsonl`` already holds
every figure. ``--track tensorboard`` also writes them as scalars under ``RUN/tensorboard/``,
to browse with ``tensorboard --logdir RUN``. Nothing is sent anywhere: the event files are
plain local files, and no server is started.

MLflow is not supported: its package pulls in a web server, a database layer and dozens of
other packages, far more than copying numbers into a folder is worth. See docs/tracking.md.

Under data-parallel training only rank 0 tracks; the other ranks get a :class:`NullTracker`.

Example:
    >>> flatten_metrics({"epoch": 1, "train": {"loss": 0.5}, "valid": {"click": {"auc": 0.7}}})
    {'train/loss': 0.5, 'valid/click/auc': 0.7}
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from taa.errors import ConfigError

logger = logging.getLogger(__name__)

TRACKERS = ("none", "tensorboard")
TENSORBOARD_FOLDER = "tensorboard"


class Tracker(Protocol):
    """Where a trainer sends its per-epoch figures besides ``metrics.jsonl``."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's resolved configuration once, at the start."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record scalar ``metrics`` (flat names such as ``valid/click/auc``) at ``step``."""

    def close(self) -> None:
        """Flush and release files."""


class NullTracker:
    """The tracker of ``--track none`` and of every rank but 0: it records nothing."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        return None

    def close(self) -> None:
        return None


class TensorBoardTracker:
    """Writes scalars to TensorBoard event files in ``log_dir`` (needs ``taa[tracking]``).

    Args:
        log_dir: folder of the event files, usually ``RUN/tensorboard``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError(
                f"--track tensorboard needs the tensorboard package, which is not installed "
                f"({error}); install it with `pip install 'taa[tracking]'` or use --track none"
            ) from error
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))
        logger.info("tracking metrics with TensorBoard in %s", self.log_dir)

    def log_params(self, params: Mapping[str, Any]) -> None:
        text = json.dumps(dict(params), indent=2, sort_keys=True, default=str)
        # Four spaces make TensorBoard's text plugin show the JSON as a code block.
        self._writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def flatten_metrics(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten a nested ``metrics.jsonl`` record into ``{"a/b/c": value}`` scalars.

    The ``epoch`` key (the step) and values that are not numbers (strings, lists, None)
    are left out; NaN is kept, since an undefined metric is information too.
    """
    flat: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, bool) or (not prefix and key == "epoch"):
            continue
        elif isinstance(value, int | float) or hasattr(value, "item"):
            number = float(value.item() if hasattr(value, "item") else value)
            if math.isfinite(number) or math.isnan(number):
                flat[name] = number
    return flat


def make_tracker(kind: str, run_dir: str | Path, *, enabled: bool = True) -> Tracker:
    """The tracker for ``--track kind`` writing under ``run_dir``.

    Args:
        kind: one of :data:`TRACKERS`.
        run_dir: the run folder; TensorBoard files go to ``run_dir/tensorboard``.
        enabled: False on ranks other than 0, which then record nothing.
    """
    if kind not in TRACKERS:
        raise ConfigError(
            f"option --track got {kind!r}; choose one of {list(TRACKERS)} "
            "(mlflow is not supported: see docs/tracking.md)"
        )
    if not enabled or kind == "none":
        return NullTracker()
    return TensorBoardTracker(Path(run_dir) / TENSORBOARD_FOLDER)

"""Device, threads, precision and seeding: the small decisions every command makes first."""

from __future__ import annotations

import contextlib
import logging
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from taa.errors import ConfigError

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "option --device got 'cuda' but torch sees no CUDA device; use --device cpu "
            "or auto, or install a CUDA build of torch"
        )
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"option --device got {name!r}; allowed: auto, cpu, cuda")
    return torch.device(name)


def apply_threads(threads: int) -> None:
    """Set torch's CPU thread count when ``threads`` > 0 (0 keeps torch's default)."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.info("torch uses %d CPU threads", threads)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` to bfloat16 when ``precision == "bf16"``, else a no-op context."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def rng_state() -> dict[str, Any]:
    """The torch generator states (CPU, and each GPU when present) as tensors."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching: not quiet and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress(total: int, description: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar over ``total`` steps, or an object whose ``update`` does nothing."""
    if not enabled:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=description, leave=False, file=sys.stderr) as bar:
        yield bar


class _NoBar:
    def update(self, count: int = 1) -> None:
        pass

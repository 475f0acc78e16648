"""Adaptation throughput: target rows per second of the TAA step, and its fraction of the GEMM rate.

The step is the library's own :class:`taa.train.steps.TaaStep`, built with the defaults of
``taa adapt`` (5 critic updates with gradient penalty per model update, Adam, source loss
weight 1) on MMoE at the paper's sizes with the AliExpress shapes (16 categorical fields,
63 numerical, 2 tasks). Each step draws ``B`` source and ``B`` target rows from the same
:class:`~taa.train.steps.PairedPasses` plan the trainer uses; throughput counts target rows.
See ``_common.py`` for how the GEMM work and the reference rate are measured.

Run: ``.venv/bin/python benchmarks/bench_adapt.py [--batch-size 2048] [--precision bf16]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the TAA step; returns the figures (nothing is asserted)."""
    device = _common.resolve_device(args.device)
    bundle = _common.build_taa_step(
        args, device, source_rows=args.source_rows, target_rows=args.target_rows
    )
    return _common.measure_step("adapt", bundle.run_one, args.batch_size, args, device)


def parser() -> argparse.ArgumentParser:
    result = _common.common_arguments(argparse.ArgumentParser(description=__doc__))
    result.add_argument("--source-rows", type=int, default=65536, help="source split rows")
    result.add_argument("--target-rows", type=int, default=16384, help="target sample rows")
    result.set_defaults(steps=1, rounds=5)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    _common.set_threads(args.threads)
    figures = run(args)
    _common.emit(_common.describe_step(figures, "target rows"))
    return figures


if __name__ == "__main__":
    main()

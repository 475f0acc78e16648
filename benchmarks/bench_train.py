"""Pretraining throughput: rows per second of the supervised step, and its fraction of GEMM rate.

The step is the library's own :class:`taa.train.steps.SupervisedStep` as ``taa pretrain``
builds it (Adam, shuffled passes over the split), on MMoE at the paper's sizes with the
AliExpress shapes. See ``_common.py`` for how the GEMM work and the reference are measured.

Run: ``.venv/bin/python benchmarks/bench_train.py [--batch-size 2048] [--precision bf16]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure the pretraining step; returns the figures (nothing is asserted)."""
    device = _common.resolve_device(args.device)
    bundle = _common.build_pretrain_step(args, device, rows=args.train_rows)
    return _common.measure_step("pretrain", bundle.run_one, args.batch_size, args, device)


def parser() -> argparse.ArgumentParser:
    result = _common.common_arguments(argparse.ArgumentParser(description=__doc__))
    result.add_argument("--train-rows", type=int, default=65536, help="rows of the train split")
    result.set_defaults(steps=2, rounds=4)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    _common.set_threads(args.threads)
    figures = run(args)
    _common.emit(_common.describe_step(figures, "rows"))
    return figures


if __name__ == "__main__":
    main()

"""Evaluation throughput: rows per second of scoring a split, and its fraction of the GEMM rate.

The model (MMoE at the paper's sizes by default) scores a random split with the AliExpress
shapes through :func:`taa.train.evaluate.collect_outputs`, the function ``taa evaluate``
uses (``torch.inference_mode``, batches sliced from tensors, probabilities copied to the
host once). See ``_common.py`` for how the GEMM work and the reference rate are measured.

Run: ``.venv/bin/python benchmarks/bench_evaluate.py [--rows 32768] [--batch-size 2048]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
from taa.train.evaluate import collect_outputs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure evaluation; returns the figures as a dict (nothing is asserted)."""
    device = _common.resolve_device(args.device)
    spec = _common.aliexpress_spec()
    model = _common.build_model_for(args, spec, device)
    split = _common.synthetic_split(args.eval_rows, spec, seed=args.seed)
    if device.type != "cpu":
        split = type(split)(*(tensor.to(device) for tensor in vars(split).values()))

    def score() -> None:
        collect_outputs(
            model, split, device=device, batch_size=args.batch_size, precision=args.precision
        )

    calls = _common.record_matmuls(score)
    flops = sum(call.flops for call in calls)
    seconds, reference = _common.measure_against_reference(
        score, calls, device, rounds=args.rounds, steps=args.steps, warmup=args.warmup
    )
    achieved = flops / seconds
    return {
        "benchmark": "evaluate",
        "model": args.model,
        "size": args.size,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "rows": args.eval_rows,
        "rows_per_second": args.eval_rows / seconds,
        "seconds_per_pass": seconds,
        "gemm_flops_per_pass": flops,
        "achieved_flops": achieved,
        "reference_flops": reference,
        "fraction_of_gemm": achieved / reference,
    }


def report(figures: dict[str, Any]) -> str:
    return (
        f"evaluate  {figures['model']} ({figures['size']} sizes) {figures['precision']} batch "
        f"{figures['batch_size']}: "
        f"{figures['rows_per_second']:,.0f} rows/s; GEMM work "
        f"{figures['gemm_flops_per_pass'] / figures['rows'] / 1e6:.1f} MFLOP/row; "
        f"{_common.format_rate(figures['achieved_flops'])} of "
        f"{_common.format_rate(figures['reference_flops'])} measured on the same GEMMs = "
        f"{figures['fraction_of_gemm']:.0%}"
    )


def parser() -> argparse.ArgumentParser:
    result = _common.common_arguments(argparse.ArgumentParser(description=__doc__))
    result.add_argument("--eval-rows", type=int, default=32768, help="rows scored per pass")
    result.set_defaults(steps=1, warmup=1, rounds=4)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    _common.set_threads(args.threads)
    figures = run(args)
    _common.emit(report(figures))
    return figures


if __name__ == "__main__":
    main()

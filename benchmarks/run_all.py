"""Run every benchmark in one process and print the figures with the machine they ran on.

1. evaluation: rows/s and fraction of the GEMM rate (``bench_evaluate.py``);
2. pretraining: rows/s and fraction of the GEMM rate (``bench_train.py``);
3. adaptation with TAA, fp32 and bf16 autocast: target rows/s and fraction of the GEMM
   rate (``bench_adapt.py``), and evaluation again in bf16;
4. the TAA step fed by a naive per-row DataLoader versus taa's batches (``bench_naive.py``),
   in this process and in a child process with torch's default OpenMP settings, at the
   paper's model sizes and at the demo's;
5. dataset preparation (``bench_prepare.py``, run as a subprocess with ``--rows``).

Nothing is asserted: times depend on the machine and on what else runs on it. The
fractions and the speed-up are ratios measured within this one run. Use ``--json`` to
keep the figures (written atomically).

Run: ``make bench`` or ``.venv/bin/python benchmarks/run_all.py [--quick] [--prepare-rows N]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import bench_adapt
import bench_evaluate
import bench_naive
import bench_train
from taa.io import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent

#: What the issue asks of this machine's CPU; printed next to the figures, never asserted.
TARGETS = {"adapt": 0.60, "evaluate": 0.70, "naive": 5.0}


def _arguments(options: argparse.Namespace, extra: list[str]) -> list[str]:
    shared = [
        "--batch-size",
        str(options.batch_size),
        "--device",
        options.device,
        "--model",
        options.model,
        "--seed",
        str(options.seed),
    ]
    if options.quick:
        shared += ["--rounds", "1", "--warmup", "1"]
    if options.compile:
        shared.append("--compile")
    return shared + extra


def _run(module: Any, argv: list[str]) -> dict[str, Any]:
    args = module.parser().parse_args(argv)
    return module.run(args)


def _prepare(rows: int) -> dict[str, Any]:
    script = HERE / "bench_prepare.py"
    if not script.is_file():
        _common.emit(f"prepare   skipped: {script} does not exist")
        return {"benchmark": "prepare", "skipped": True}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(script), "--rows", str(rows)], capture_output=True, text=True
    )
    for line in completed.stdout.splitlines():
        _common.emit(f"prepare   {line}")
    if completed.returncode != 0:
        _common.emit(f"prepare   failed with exit code {completed.returncode}:")
        for line in completed.stderr.splitlines()[-10:]:
            _common.emit(f"prepare   {line}")
    return {
        "benchmark": "prepare",
        "rows": rows,
        "returncode": completed.returncode,
        "seconds": time.perf_counter() - started,
        "output": completed.stdout,
    }


def _verdict(value: float, target: float, kind: str) -> str:
    shown = f"{value:.0%}" if kind == "fraction" else f"{value:.2f}x"
    wanted = f"{target:.0%}" if kind == "fraction" else f"{target:.0f}x"
    return f"{shown} (target >= {wanted}: {'met' if value >= target else 'NOT met'})"


def markdown(results: list[dict[str, Any]]) -> str:
    """The figures of one run as Markdown tables (pasted into benchmarks/README.md)."""
    lines = [
        "| benchmark | precision | rows/s | s/step | GEMM GFLOP/step | achieved GFLOP/s "
        "| reference GFLOP/s | fraction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in results:
        if item["benchmark"] not in ("evaluate", "pretrain", "adapt"):
            continue
        seconds = item.get("seconds_per_step", item.get("seconds_per_pass"))
        flops = item.get("gemm_flops_per_step", item.get("gemm_flops_per_pass"))
        unit = " (per pass)" if "seconds_per_pass" in item else ""
        fraction = f"{item['fraction_of_gemm']:.0%}"
        if "fraction_of_fp32_gemm" in item:
            fraction += f" ({item['fraction_of_fp32_gemm']:.0%} of fp32)"
        lines.append(
            f"| {item['benchmark']} | {item['precision']} | {item['rows_per_second']:,.0f} "
            f"| {seconds:.3f}{unit} | {flops / 1e9:.1f} | {item['achieved_flops'] / 1e9:.1f} "
            f"| {item['reference_flops'] / 1e9:.1f} | {fraction} |"
        )
    lines += [
        "",
        "| naive comparison | taa batches | per-row DataLoader | ratio "
        "| DataLoader, torch's OpenMP defaults | ratio | step alone, no data path "
        "| most any data path can gain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for item in results:
        if item["benchmark"] != "naive":
            continue
        defaults = item.get("naive_torch_defaults_rows_per_second")
        lines.append(
            f"| {item['model']}, {item['size']} sizes, batch {item['batch_size']} "
            f"| {item['fast_rows_per_second']:,.0f} | {item['naive_rows_per_second']:,.0f} "
            f"| {item['speedup']:.2f}x "
            + (
                f"| {defaults:,.0f} | {item['speedup_vs_torch_defaults']:.2f}x "
                if defaults
                else "| - | - "
            )
            + f"| {item['step_only_rows_per_second']:,.0f} | {item['ceiling']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--model", default="mmoe")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="default: one per core")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="one timing round each")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the model")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 runs")
    parser.add_argument(
        "--no-demo-sizes", action="store_true", help="skip the naive comparison at demo sizes"
    )
    parser.add_argument("--prepare-rows", type=int, default=1_000_000, help="0 skips it")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--markdown", type=Path, default=None, help="also write Markdown tables of the figures"
    )
    options = parser.parse_args(argv)

    threads = _common.set_threads(options.threads)
    device = _common.resolve_device(options.device)
    machine = _common.machine_info(device)
    _common.emit(f"machine   {_common.format_machine(machine)}")
    _common.emit(f"command   {' '.join([Path(sys.executable).name, *sys.argv])}")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []

    results.append(_run(bench_evaluate, _arguments(options, [])))
    _common.emit(bench_evaluate.report(results[-1]))
    results.append(_run(bench_train, _arguments(options, [])))
    _common.emit(_common.describe_step(results[-1], "rows"))
    results.append(_run(bench_adapt, _arguments(options, [])))
    _common.emit(_common.describe_step(results[-1], "target rows"))
    adapt_fp32 = results[-1]
    if not options.no_bf16:
        bf16 = _arguments(options, ["--precision", "bf16"])
        results.append(_run(bench_adapt, bf16))
        _common.emit(_common.describe_step(results[-1], "target rows"))
        results.append(_run(bench_evaluate, bf16))
        _common.emit(bench_evaluate.report(results[-1]))
    naive_argv = _arguments(options, [])
    results.append(bench_naive.run(bench_naive.parser().parse_args(naive_argv), naive_argv))
    _common.emit(bench_naive.report(results[-1]))
    naive = results[-1]
    if not options.no_demo_sizes:
        demo_argv = _arguments(options, ["--size", "demo", "--steps", "5"])
        results.append(bench_naive.run(bench_naive.parser().parse_args(demo_argv), demo_argv))
        _common.emit(bench_naive.report(results[-1]))
    if options.prepare_rows > 0:
        results.append(_prepare(options.prepare_rows))

    evaluate = results[0]
    _common.emit(
        "summary   adaptation fp32: "
        + _verdict(adapt_fp32["fraction_of_gemm"], TARGETS["adapt"], "fraction")
        + " of the GEMM rate; evaluation: "
        + _verdict(evaluate["fraction_of_gemm"], TARGETS["evaluate"], "fraction")
        + "; vs naive pipeline: "
        + _verdict(naive["speedup"], TARGETS["naive"], "ratio")
        + f" (at most {naive['ceiling']:.2f}x for any data path)"
        + f"; threads {threads}; load average now {_common.load_average():.2f}; "
        + f"{time.perf_counter() - started:.0f} s in all"
    )
    payload = {"machine": machine, "results": results}
    if options.json is not None:
        atomic_write_json(options.json, payload)
        _common.emit(f"figures written to {options.json}")
    if options.markdown is not None:
        atomic_write_text(options.markdown, markdown(results))
        _common.emit(f"tables written to {options.markdown}")
    return payload


if __name__ == "__main__":
    main()

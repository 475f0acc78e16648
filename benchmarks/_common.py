"""Shared helpers of the benchmarks: the machine, timing, GEMM counting and the GEMM reference.

How a fraction of the matrix-multiply rate is worked out:

1. One real step runs under :class:`MatmulRecorder`, a dispatch mode that sees every
   matrix multiply ATen executes (``mm``, ``addmm``, ``bmm``, ``baddbmm``), in the forward,
   the backward and the double backward of the gradient penalty alike. Each call is kept
   with its shapes, its operands' layouts (row-major or transposed) and its dtype.
2. The step's GEMM work is ``sum(2 * m * k * n)`` over those calls: precisely what the
   step executes, not an estimate (element-wise work, embeddings and BatchNorm add time
   but are not counted as FLOPs, as is usual for a model-FLOP utilisation).
3. The reference rate is measured in the same process, right after the step timings,
   by replaying exactly those GEMMs with ``torch.matmul`` on operands of the same shapes,
   layouts and dtype, back to back: the rate this machine reaches on the step's own
   shapes when nothing but matrix multiplies runs.

The fraction is ``(step GEMM FLOPs / measured seconds per step) / reference rate``.
"""

from __future__ import annotations

import os

# Idle OpenMP threads spin briefly, then sleep, as `taa` sets it (src/taa/cli/main.py). It
# must be set before torch (and its OpenMP runtime) loads. On a loaded or shared machine, or
# beside DataLoader workers, long-spinning threads steal the cores the working threads need
# (docs/performance.md). An explicit setting is kept; a child process that must run with
# torch's defaults sets TAA_BENCH_OPENMP_DEFAULTS.
if not (
    "OMP_WAIT_POLICY" in os.environ
    or "GOMP_SPINCOUNT" in os.environ
    or os.environ.get("TAA_BENCH_OPENMP_DEFAULTS")
):
    os.environ["GOMP_SPINCOUNT"] = "1000"

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from taa.data.batches import TensorSplit
from taa.data.schema import InputSpec

#: Set in a child process that must run with torch's OpenMP defaults (bench_naive.py).
KEEP_OPENMP_DEFAULTS = "TAA_BENCH_OPENMP_DEFAULTS"

# Vocabulary sizes of the AliExpress schema: the largest code seen per field plus one,
# plus the reserved out-of-vocabulary row (see /work/shared/data/aliexpress-real/README.md).
ALIEXPRESS_VOCAB_SIZES = (11, 5, 7, 3, 22, 8, 51, 9, 8, 3, 3, 3, 3, 3, 3, 3)
ALIEXPRESS_NUMERICAL = 63
ALIEXPRESS_TASKS = ("click", "conversion")


def aliexpress_spec() -> InputSpec:
    """The input shapes of the AliExpress schema: 16 categorical fields, 63 numerical, 2 tasks."""
    return InputSpec(
        vocab_sizes=ALIEXPRESS_VOCAB_SIZES,
        num_numerical=ALIEXPRESS_NUMERICAL,
        tasks=ALIEXPRESS_TASKS,
    )


def synthetic_split(rows: int, spec: InputSpec, seed: int, click_rate: float = 0.1) -> TensorSplit:
    """A split of ``rows`` random rows with the shapes of ``spec``.

    Speed does not depend on the values, so the benchmarks use random rows: categories
    uniform in ``1..vocab-1``, numerical values uniform in ``[0, 1)``, clicks with
    probability ``click_rate`` and conversions a tenth of the clicks (both classes are
    present in every task, so losses and AUCs are defined).

    Returns:
        categorical ``[rows, F]`` int64, numerical ``[rows, N]`` float32, labels ``[rows, T]``
        float32, groups ``[rows]`` int64 (pages of 20 rows).
    """
    generator = np.random.default_rng(seed)
    categorical = np.stack(
        [generator.integers(1, size, rows) for size in spec.vocab_sizes], axis=1
    ).astype(np.int64)
    numerical = generator.random((rows, spec.num_numerical), dtype=np.float32)
    click = generator.random(rows) < click_rate
    labels = [click]
    for _ in spec.tasks[1:]:
        labels.append(labels[-1] & (generator.random(rows) < 0.1))
    label_array = np.stack(labels, axis=1).astype(np.float32)
    return TensorSplit(
        categorical=torch.from_numpy(categorical),
        numerical=torch.from_numpy(numerical),
        labels=torch.from_numpy(label_array),
        groups=torch.from_numpy(np.arange(rows, dtype=np.int64) // 20),
    )


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, threads, torch and accelerator."""
    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "simd": ",".join(
            name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if name in flags
        ),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "unset"),
        "load_average_1min": round(load_average(), 2),
    }
    if device.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(device)
    return info


def format_machine(info: dict[str, Any]) -> str:
    return " | ".join(f"{key}: {value}" for key, value in info.items())


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads, or one per usable core when ``None``."""
    count = threads or usable_cores()
    torch.set_num_threads(count)
    return count


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, precision: str) -> Any:
    """``torch.autocast`` to bfloat16 when ``precision == "bf16"``, else a disabled one."""
    return torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"
    )


def timed_steps(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step``, averaged over ``steps`` calls after ``warmup`` calls.

    The device is synchronised only before and after the timed calls, never in between.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


# --- GEMM recording and the reference rate ------------------------------------------------

_MATMUL_OPS = {"mm", "addmm", "bmm", "baddbmm", "_addmm_activation"}


@dataclass(frozen=True)
class MatmulCall:
    """One matrix multiply a step executed.

    Attributes:
        batch: batch count of a ``bmm`` (1 for ``mm``).
        m, k, n: the product is ``[m, k] x [k, n]``.
        left_transposed, right_transposed: whether an operand was a transposed view
            (column-major in memory), as backward passes use them.
        dtype: the operands' dtype.
    """

    batch: int
    m: int
    k: int
    n: int
    left_transposed: bool
    right_transposed: bool
    dtype: torch.dtype

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


def _is_transposed(tensor: torch.Tensor) -> bool:
    return tensor.dim() >= 2 and tensor.stride(-2) == 1 and tensor.stride(-1) != 1


class MatmulRecorder(TorchDispatchMode):
    """Records every matrix multiply executed inside the ``with`` block.

    Example:
        >>> with MatmulRecorder() as recorder:
        ...     _ = torch.ones(2, 3) @ torch.ones(3, 4)
        >>> recorder.flops
        48
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[MatmulCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        name = func._schema.name.split("::")[-1]
        if name == "linear":
            # Inference mode reaches a fused linear kernel: input [..., K] times weight^T.
            inputs, weight = args[0], args[1]
            self._add(
                1,
                inputs.numel() // inputs.shape[-1],
                weight.shape[1],
                weight.shape[0],
                False,
                True,
                inputs.dtype,
            )
        elif name in _MATMUL_OPS:
            offset = 1 if name in {"addmm", "baddbmm", "_addmm_activation"} else 0
            left, right = args[offset], args[offset + 1]
            self._add(
                left.shape[0] if left.dim() == 3 else 1,
                left.shape[-2],
                left.shape[-1],
                right.shape[-1],
                _is_transposed(left),
                _is_transposed(right),
                left.dtype,
            )
        return func(*args, **(kwargs or {}))

    def _add(
        self,
        batch: int,
        m: int,
        k: int,
        n: int,
        left_transposed: bool,
        right_transposed: bool,
        dtype: torch.dtype,
    ) -> None:
        self.calls.append(
            MatmulCall(int(batch), int(m), int(k), int(n), left_transposed, right_transposed, dtype)
        )

    @property
    def flops(self) -> int:
        """Floating-point operations of all recorded multiplies (2 per multiply-add)."""
        return sum(call.flops for call in self.calls)


def record_matmuls(step: Callable[[], Any]) -> list[MatmulCall]:
    """The matrix multiplies one call of ``step`` executes."""
    with MatmulRecorder() as recorder:
        step()
    return recorder.calls


def _operand(
    batch: int, rows: int, cols: int, transposed: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    shape = (cols, rows) if transposed else (rows, cols)
    if batch > 1:
        tensor = torch.randn((batch, *shape), device=device).to(dtype)
        return tensor.transpose(-1, -2) if transposed else tensor
    tensor = torch.randn(shape, device=device).to(dtype)
    return tensor.t() if transposed else tensor


def gemm_reference_rate(
    calls: Sequence[MatmulCall], device: torch.device, repeats: int = 5
) -> float:
    """FLOP/s of ``torch.matmul`` replaying ``calls`` back to back (the best of ``repeats``).

    The operands are allocated once, with each call's shapes, layouts and dtype; a pass
    runs every call in order, as the step does, so caches see the same sequence of sizes.
    """
    if not calls:
        raise ValueError("no matrix multiplies to replay: the step recorded none")
    operands = {}
    for call in calls:
        key = call
        if key not in operands:
            operands[key] = (
                _operand(call.batch, call.m, call.k, call.left_transposed, call.dtype, device),
                _operand(call.batch, call.k, call.n, call.right_transposed, call.dtype, device),
            )
    pairs = [operands[call] for call in calls]
    total = sum(call.flops for call in calls)

    def one_pass() -> None:
        for left, right in pairs:
            torch.matmul(left, right)

    one_pass()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_pass()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return total / min(seconds)


def measure_against_reference(
    step: Callable[[], Any],
    calls: Sequence[MatmulCall],
    device: torch.device,
    *,
    rounds: int,
    steps: int,
    warmup: int,
) -> tuple[float, float]:
    """Seconds per ``step`` call and the reference GEMM rate, measured in alternating rounds.

    The machine may be shared, so each round times ``steps`` calls and then one replay of
    the step's GEMMs; the best round of each is kept (the least disturbed one). Both
    figures come from the same process and the same minutes, so their ratio is fair even
    when the absolute rates move.

    Returns:
        ``(seconds per step, reference FLOP/s)``.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    seconds = []
    rates = []
    for _ in range(max(rounds, 1)):
        seconds.append(timed_steps(step, steps, 0, device))
        rates.append(gemm_reference_rate(calls, device, repeats=3))
    return min(seconds), max(rates)


def summarize_calls(calls: Iterable[MatmulCall]) -> dict[str, int]:
    """Matrix multiplies grouped by shape: ``"BxMxKxN dtype" -> count``."""
    summary: dict[str, int] = {}
    for call in calls:
        key = f"{call.batch}x{call.m}x{call.k}x{call.n} {str(call.dtype).replace('torch.', '')}"
        summary[key] = summary.get(key, 0) + 1
    return summary


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every benchmark shares."""
    parser.add_argument("--batch-size", type=int, default=2048, help="rows per batch and domain")
    parser.add_argument("--steps", type=int, default=6, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast"
    )
    parser.add_argument("--model", default="mmoe", help="registered model name")
    parser.add_argument(
        "--size", default="paper", choices=sorted(SIZES), help="model sizes: paper or demo"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating timing rounds (best one kept)"
    )
    parser.add_argument("--compile", action="store_true", help="wrap the model in torch.compile")
    return parser


def load_average() -> float:
    """The 1-minute load average: above the core count, other work competes for the CPU."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available
        return float("nan")


def emit(line: str) -> None:
    """Print one line of figures (benchmarks are scripts: their output is the point)."""
    print(line, flush=True)


def format_rate(flops_per_second: float) -> str:
    return f"{flops_per_second / 1e9:.1f} GFLOP/s"


# --- the library's own steps, built as `taa adapt` and `taa pretrain` build them ---------


@dataclass
class StepBundle:
    """A library step, the plan that feeds it, and what was built around them.

    ``step(*indices)`` is the trainer's step object (:class:`taa.train.steps.TaaStep` or
    :class:`~taa.train.steps.SupervisedStep`); ``next_indices()`` draws the next
    indices from the same batch plan the trainer uses.
    """

    step: Any
    plan: Any
    model: torch.nn.Module
    source: TensorSplit | None
    target: TensorSplit
    batch_size: int
    _iterator: Any = None

    def next_indices(self) -> tuple[torch.Tensor, ...]:
        while True:
            if self._iterator is None:
                self._iterator = iter(self.plan.epoch(0))
            try:
                return next(self._iterator)
            except StopIteration:
                self._iterator = None

    def run_one(self) -> Any:
        return self.step(*self.next_indices())


#: Model sizes the benchmarks know: the paper's (ModelConfig defaults) and `taa demo`'s.
SIZES = {
    "paper": {},
    "demo": {"embedding_dim": 16, "expert_hidden": (128, 64), "tower_hidden": (64, 32)},
}


def build_model_for(args: argparse.Namespace, spec: InputSpec, device: torch.device) -> Any:
    """The benchmarked model, seeded: ``args.size`` picks the paper's or the demo's sizes."""
    from taa.models import ModelConfig, build_model

    torch.manual_seed(args.seed)
    config = ModelConfig(**SIZES[getattr(args, "size", "paper")])
    return build_model(args.model, spec, config).to(device)


def build_taa_step(
    args: argparse.Namespace, device: torch.device, *, source_rows: int, target_rows: int
) -> StepBundle:
    """A TAA adaptation step with the defaults of ``taa adapt`` (critics, optimizers, plan)."""
    from taa.modules.critic import Critic
    from taa.train.adapt import CRITIC_BETAS
    from taa.train.config import AdaptConfig
    from taa.train.setup import adam, compiled
    from taa.train.steps import PairedPasses, TaaStep

    defaults = AdaptConfig(dataset=".", target="B", sample="s", source_checkpoint=Path("x"))
    spec = aliexpress_spec()
    model = build_model_for(args, spec, device)
    source = synthetic_split(source_rows, spec, seed=args.seed)
    target = synthetic_split(target_rows, spec, seed=args.seed + 1)
    critics = torch.nn.ModuleList(
        Critic(model.feature_dim, defaults.critic_hidden) for _ in spec.tasks
    ).to(device)
    step = TaaStep(
        model,
        compiled(model, args.compile),
        adam(model.parameters(), defaults.lr, defaults.weight_decay),
        target,
        device=device,
        precision=args.precision,
        task_weights=torch.ones(len(spec.tasks)),
        source=source,
        source_weight=defaults.resolved_source_loss_weight,
        critics=critics,
        critic_optimizer=adam(critics.parameters(), defaults.critic_lr, betas=CRITIC_BETAS),
        critic_steps=defaults.critic_steps,
        gp_weight=defaults.gp_weight,
        adversarial_weight=defaults.adversarial_weight,
    )
    plan = PairedPasses(source_rows, target_rows, args.batch_size, args.seed)
    return StepBundle(step, plan, model, source, target, args.batch_size)


def build_pretrain_step(args: argparse.Namespace, device: torch.device, *, rows: int) -> StepBundle:
    """A pretraining step as ``taa pretrain`` builds it (Adam, shuffled passes)."""
    from taa.train.config import PretrainConfig
    from taa.train.setup import adam, compiled
    from taa.train.steps import ShuffledPasses, SupervisedStep

    defaults = PretrainConfig(dataset=".", domain="A")
    spec = aliexpress_spec()
    model = build_model_for(args, spec, device)
    split = synthetic_split(rows, spec, seed=args.seed)
    step = SupervisedStep(
        model,
        compiled(model, args.compile),
        adam(model.parameters(), defaults.lr, defaults.weight_decay),
        split,
        device=device,
        precision=args.precision,
        task_weights=torch.ones(len(spec.tasks)),
    )
    plan = ShuffledPasses(rows, args.batch_size, args.seed)
    return StepBundle(step, plan, model, None, split, args.batch_size)


def as_fp32(calls: Sequence[MatmulCall]) -> list[MatmulCall]:
    """The same GEMMs in float32: the reference the targets are stated against."""
    return [
        MatmulCall(c.batch, c.m, c.k, c.n, c.left_transposed, c.right_transposed, torch.float32)
        for c in calls
    ]


def measure_step(
    name: str,
    step: Callable[[], Any],
    rows_per_step: int,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Time ``step`` against the GEMM reference of its own matrix multiplies.

    Returns the figures: rows per second (``rows_per_step`` counts target rows for an
    adaptation step), seconds per step, GEMM FLOPs per step, achieved and reference
    FLOP/s and their ratio; with bf16, also the ratio to the same GEMMs in float32.
    """
    step()  # first call: allocations, lazy initialisation, compilation
    calls = record_matmuls(step)
    flops = sum(call.flops for call in calls)
    seconds, reference = measure_against_reference(
        step, calls, device, rounds=args.rounds, steps=args.steps, warmup=args.warmup
    )
    figures: dict[str, Any] = {
        "benchmark": name,
        "model": args.model,
        "size": args.size,
        "precision": args.precision,
        "compile": bool(getattr(args, "compile", False)),
        "batch_size": args.batch_size,
        "rows_per_second": rows_per_step / seconds,
        "seconds_per_step": seconds,
        "gemm_flops_per_step": flops,
        "gemm_calls_per_step": len(calls),
        "achieved_flops": flops / seconds,
        "reference_flops": reference,
        "fraction_of_gemm": flops / seconds / reference,
    }
    if any(call.dtype != torch.float32 for call in calls):
        fp32_reference = gemm_reference_rate(as_fp32(calls), device, repeats=2)
        figures["fp32_reference_flops"] = fp32_reference
        figures["fraction_of_fp32_gemm"] = flops / seconds / fp32_reference
    return figures


def describe_step(figures: dict[str, Any], unit: str) -> str:
    """One line of a training benchmark's figures."""
    line = (
        f"{figures['benchmark']:<9} {figures['model']} ({figures['size']} sizes) "
        f"{figures['precision']}"
        f"{' compiled' if figures['compile'] else ''} batch {figures['batch_size']}: "
        f"{figures['rows_per_second']:,.0f} {unit}/s ({figures['seconds_per_step']:.3f} s/step); "
        f"GEMM work {figures['gemm_flops_per_step'] / 1e9:.1f} GFLOP/step in "
        f"{figures['gemm_calls_per_step']} calls; {format_rate(figures['achieved_flops'])} of "
        f"{format_rate(figures['reference_flops'])} on the same GEMMs = "
        f"{figures['fraction_of_gemm']:.0%}"
    )
    if "fraction_of_fp32_gemm" in figures:
        line += (
            f"; vs the same GEMMs in fp32 ({format_rate(figures['fp32_reference_flops'])}) = "
            f"{figures['fraction_of_fp32_gemm']:.0%}"
        )
    return line

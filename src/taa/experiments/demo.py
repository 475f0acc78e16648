"""The demo: the whole pipeline from nothing to a table of methods, in a few minutes on a CPU.

By default it simulates a source country and a shifted target country, prepares both into
one dataset, draws a 1 % stratified sample of the target's train rows, pretrains a model
on the source, adapts it with taa, finetune and target-only (and scores the source model
as it is: source-only), and evaluates every run on the target's test split. ``source`` and
``target`` point it at two processed-layout folders instead (e.g. the real rows in
``/work/shared/data/aliexpress-real/A`` and ``B``).

Output folder::

    OUT/demo.json                      # the config, the runs and the table
    OUT/work/simulated/, work/dataset/ # simulated countries and the prepared dataset
    OUT/runs/pretrain-<model>/         # the source model
    OUT/runs/<method>-<model>/         # one run folder per method
    OUT/results.md, results.csv        # the table
    OUT/report/report.html, report.md  # the report (taa report OUT writes it again)

Finished steps are skipped when the demo is run again with the same settings, so an
interrupted demo continues where it stopped.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from taa.errors import ConfigError
from taa.experiments.pipeline import DataSpec, PipelineSteps, PreparedPair
from taa.experiments.report import ReportResult, write_report
from taa.experiments.results import DEMO_MANIFEST, RunSummary, read_final_metrics, read_json
from taa.experiments.tables import MISSING, Table, comparison_table, format_number
from taa.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

DEMO_METHODS = ("source-only", "finetune", "target-only", "taa")
#: Settings that change results; a demo folder made with others is not reused.
_RESULT_SETTINGS = (
    "rows",
    "shift",
    "epochs",
    "adapt_epochs",
    "lr",
    "adapt_lr",
    "adapt_batch_size",
    "seed",
    "model",
    "source",
    "target",
    "fraction",
    "batch_size",
    "embedding_dim",
    "expert_hidden",
    "tower_hidden",
    "methods",
)


def _option(help_text: str, choices: list[str] | None = None) -> dict[str, Any]:
    return {"help": help_text, "choices": choices} if choices else {"help": help_text}


@dataclass
class DemoConfig:
    """Settings of :func:`run_demo` and ``taa demo``.

    The defaults are chosen so that the demo finishes in a few minutes on two CPU cores
    and still shows the gap between the source model and the adapted ones.

    Example:
        >>> DemoConfig().fraction
        0.01
    """

    out: Path = field(
        default=Path("taa-demo"), metadata=_option("Work folder of the demo (kept; reused).")
    )
    rows: int = field(
        default=400_000,
        metadata=_option("Simulated item rows per country (train and test together)."),
    )
    shift: float = field(
        default=0.6, metadata=_option("Simulated distance between the two countries, 0 to 1.")
    )
    epochs: int = field(default=4, metadata=_option("Most epochs of pretraining on the source."))
    adapt_epochs: int = field(
        default=10,
        metadata=_option(
            "Most epochs of each adaptation (an epoch is one pass over the target sample)."
        ),
    )
    seed: int = field(default=0, metadata=_option("Seed of the simulator, sample and training."))
    model: str = field(default="mmoe", metadata=_option("Model to pretrain and adapt."))
    source: Path | None = field(
        default=None,
        metadata=_option(
            "Source folder in the processed layout (train.csv, test.csv) instead of "
            "simulated data; needs --target."
        ),
    )
    target: Path | None = field(
        default=None, metadata=_option("Target folder in the processed layout; needs --source.")
    )
    fraction: float = field(
        default=0.01,
        metadata=_option(
            "Share of the target train rows adaptation may use (stratified by labels)."
        ),
    )
    methods: str = field(
        default=",".join(DEMO_METHODS),
        metadata=_option(
            "Comma-separated methods (taa, finetune, dann, target-only, source-only)."
        ),
    )
    batch_size: int = field(default=1024, metadata=_option("Rows per batch in pretraining."))
    adapt_batch_size: int = field(
        default=128, metadata=_option("Rows per batch and domain in adaptation.")
    )
    lr: float = field(default=3e-3, metadata=_option("Adam learning rate of pretraining."))
    adapt_lr: float = field(default=1e-3, metadata=_option("Adam learning rate of adaptation."))
    embedding_dim: int = field(default=16, metadata=_option("Embedding width of the model."))
    expert_hidden: tuple[int, ...] = field(
        default=(128, 64), metadata=_option("Hidden sizes of each expert (last: feature width).")
    )
    tower_hidden: tuple[int, ...] = field(
        default=(64, 32), metadata=_option("Hidden sizes of each task tower.")
    )
    device: str = field(
        default="auto", metadata=_option("Where to train.", ["auto", "cpu", "cuda"])
    )
    threads: int = field(default=0, metadata=_option("CPU threads; 0 keeps torch's default."))
    report: bool = field(default=True, metadata=_option("Write the HTML and Markdown report."))
    overwrite: bool = field(
        default=False, metadata=_option("Delete the work folder first and start over.")
    )

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.source = None if self.source is None else Path(self.source)
        self.target = None if self.target is None else Path(self.target)
        self.expert_hidden = tuple(int(size) for size in self.expert_hidden)
        self.tower_hidden = tuple(int(size) for size in self.tower_hidden)
        if (self.source is None) != (self.target is None):
            raise ConfigError(
                "options --source and --target go together: give both processed folders, or "
                "neither to simulate the data"
            )
        if self.rows < 1000:
            raise ConfigError(f"option --rows got {self.rows}; allowed: 1000 or more")
        if not 0.0 <= self.shift <= 1.0:
            raise ConfigError(f"option --shift got {self.shift}; allowed: a number in [0, 1]")
        for name in ("epochs", "adapt_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"option --{name.replace('_', '-')} got {getattr(self, name)}; allowed: an "
                    "integer >= 1"
                )
        for name in ("lr", "adapt_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"option --{name.replace('_', '-')} got {getattr(self, name)}; allowed: a "
                    "number > 0"
                )
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(
                f"option --fraction got {self.fraction}; allowed: a number in (0, 1], e.g. 0.01"
            )
        for name in ("batch_size", "adapt_batch_size"):
            if getattr(self, name) < 2:
                raise ConfigError(
                    f"option --{name.replace('_', '-')} got {getattr(self, name)}; allowed: 2 "
                    "or more"
                )
        self.method_list()
        from taa.models.base import available_models

        if self.model not in available_models():
            raise ConfigError(
                f"option --model got {self.model!r}; allowed: one of {available_models()}"
            )

    def method_list(self) -> tuple[str, ...]:
        """The methods to run, checked against those the trainer knows."""
        from taa.train.config import METHODS

        names = tuple(part.strip() for part in self.methods.split(",") if part.strip())
        unknown = [name for name in names if name not in METHODS]
        if not names or unknown:
            raise ConfigError(
                f"option --methods got {self.methods!r}; allowed: a comma-separated list of "
                f"{list(METHODS)}"
            )
        return names

    def data_spec(self) -> DataSpec:
        """Where the demo's source and target come from."""
        if self.source is not None and self.target is not None:
            return DataSpec(source=str(self.source.resolve()), target=str(self.target.resolve()))
        return DataSpec(
            source="es",
            target="us",
            simulate=True,
            rows=self.rows,
            shift=self.shift,
            simulate_seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        data = {}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = (
                str(value)
                if isinstance(value, Path)
                else list(value)
                if isinstance(value, tuple)
                else value
            )
        return data


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        out: the demo folder.
        pair: the prepared dataset and its source and target domains.
        runs: method -> run folder (``pretrain`` included).
        metrics: method -> final metrics on the target test split.
        table: per-task AUC and log-loss per method (ΔAUC against source-only).
        report: the report written, if asked.
        seconds: wall time of each step.
    """

    out: Path
    pair: PreparedPair
    runs: dict[str, Path]
    metrics: dict[str, RunSummary]
    table: Table
    report: ReportResult | None
    seconds: dict[str, float] = field(default_factory=dict)


StepCallback = Callable[[str, int, int], None]


def _check_reuse(config: DemoConfig) -> None:
    """Refuse to mix a folder's finished runs with runs made under other settings."""
    manifest = config.out / DEMO_MANIFEST
    if config.overwrite and config.out.exists():
        logger.info("deleting %s (--overwrite)", config.out)
        shutil.rmtree(config.out)
        return
    if not manifest.is_file():
        return
    previous = read_json(manifest).get("config", {})
    current = config.to_dict()
    changed = [key for key in _RESULT_SETTINGS if previous.get(key) != current.get(key)]
    if changed:
        details = ", ".join(
            f"{key}: {previous.get(key)!r} -> {current.get(key)!r}" for key in changed
        )
        raise ConfigError(
            f"{config.out} holds a demo made with other settings ({details}); pass --overwrite "
            "to start over, or --out to use another folder"
        )


def run_demo(
    config: DemoConfig, *, progress: bool = False, on_step: StepCallback | None = None
) -> DemoResult:
    """Run the demo end to end and return its table (see the module docstring).

    Args:
        config: what to run.
        progress: let the trainers show their progress bars.
        on_step: called as ``on_step(label, index, total)`` before each step, with a short
            label such as ``"adapt taa"`` (the log line says more).
    """
    methods = config.method_list()
    _check_reuse(config)
    config.out.mkdir(parents=True, exist_ok=True)
    steps = PipelineSteps(quiet=not progress, device=config.device)
    total = 3 + len(methods) + int(config.report)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    counter = iter(range(total))

    def step(label: str, detail: str) -> None:
        index = next(counter)
        logger.info("demo step %d/%d: %s: %s", index + 1, total, label, detail)
        if on_step:
            on_step(label, index, total)

    spec = config.data_spec()
    step("data", spec.describe())
    clock = time.perf_counter()
    pair = steps.prepare(spec, config.out / "work")
    seconds["data"] = time.perf_counter() - clock

    step("target sample", f"{config.fraction:g} of the {pair.target} train rows")
    clock = time.perf_counter()
    sample = steps.sample(pair, config.fraction, config.seed, valid_fraction=0.2)
    seconds["sample"] = time.perf_counter() - clock

    runs: dict[str, Path] = {"pretrain": config.out / "runs" / f"pretrain-{config.model}"}
    pretrain_options = {
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "threads": config.threads,
    }
    adapt_options = {
        "epochs": config.adapt_epochs,
        "batch_size": config.adapt_batch_size,
        "lr": config.adapt_lr,
        "threads": config.threads,
    }
    model_config = {
        "embedding_dim": config.embedding_dim,
        "expert_hidden": config.expert_hidden,
        "tower_hidden": config.tower_hidden,
    }
    step(f"pretrain {config.model}", f"on {pair.source}")
    clock = time.perf_counter()
    source_checkpoint = steps.pretrain(
        pair,
        config.model,
        config.seed,
        runs["pretrain"],
        {**pretrain_options, "model_config": model_config},
    )
    seconds["pretrain"] = time.perf_counter() - clock

    for method in methods:
        step(f"adapt {method}", f"{config.model} on {pair.target}/{sample}")
        runs[method] = config.out / "runs" / f"{method}-{config.model}"
        clock = time.perf_counter()
        steps.adapt(
            pair, method, sample, config.seed, source_checkpoint, runs[method], adapt_options
        )
        seconds[method] = time.perf_counter() - clock

    metrics = {method: read_final_metrics(runs[method]) for method in methods}
    table = comparison_table(metrics)
    table.notes.append(source_gap_note(read_final_metrics(runs["pretrain"]), metrics))
    description = (
        f"{config.model} pretrained on {pair.source}, adapted to {pair.target} with "
        f"{config.fraction:g} of its train rows ({sample}); {spec.describe()}."
    )
    _write_outputs(config, pair, runs, metrics, table, description, seconds)

    report = None
    if config.report:
        step("report", str(config.out / "report"))
        clock = time.perf_counter()
        report = write_report(config.out)
        seconds["report"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started
    _write_manifest(config, pair, runs, description, seconds)
    return DemoResult(config.out, pair, runs, metrics, table, report, seconds)


def source_gap_note(pretrain: RunSummary, metrics: dict[str, RunSummary]) -> str:
    """One line comparing the source model on its own test split with it on the target's.

    Example:
        >>> own = RunSummary(Path("p"), "pretrain", "mmoe", "ES", "test", 3, 3,
        ...                  {"click": {"auc": 0.71}})
        >>> other = RunSummary(Path("s"), "source-only", "mmoe", "US", "test", 0, 0,
        ...                    {"click": {"auc": 0.65}})
        >>> source_gap_note(own, {"source-only": other})
        'Source model on its own ES test split: click AUC 0.7100 (on US: 0.6500, -0.0600).'
    """
    target = metrics.get("source-only")
    parts = []
    for task, values in pretrain.tasks.items():
        own = values.get("auc", math.nan)
        text = f"{task} AUC {format_number(own)}"
        if target is not None:
            shifted = target.tasks.get(task, {}).get("auc", math.nan)
            change = shifted - own
            difference = f"{change:+.4f}" if math.isfinite(change) else MISSING
            text += f" (on {target.domain}: {format_number(shifted)}, {difference})"
        parts.append(text)
    return f"Source model on its own {pretrain.domain} {pretrain.split} split: {', '.join(parts)}."


def _write_manifest(
    config: DemoConfig,
    pair: PreparedPair,
    runs: dict[str, Path],
    description: str,
    seconds: dict[str, float],
) -> None:
    atomic_write_json(
        config.out / DEMO_MANIFEST,
        {
            "kind": "demo",
            "config": config.to_dict(),
            "description": description,
            "dataset": _relative(pair.dataset, config.out),
            "source": pair.source,
            "target": pair.target,
            "runs": {method: _relative(path, config.out) for method, path in runs.items()},
            "seconds": {key: round(value, 2) for key, value in seconds.items()},
        },
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _write_outputs(
    config: DemoConfig,
    pair: PreparedPair,
    runs: dict[str, Path],
    metrics: dict[str, RunSummary],
    table: Table,
    description: str,
    seconds: dict[str, float],
) -> None:
    """``results.md``, ``results.csv`` and a first ``demo.json`` (the report reads it)."""
    _write_manifest(config, pair, runs, description, seconds)
    markdown = "\n".join(
        ["# taa demo", "", description, "", table.to_markdown(), "", *table.notes, ""]
    )
    atomic_write_text(config.out / "results.md", markdown)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "task", "auc", "logloss", "gauc", "rows", "positives", "run_dir"])
    for method, summary in metrics.items():
        for task, values in summary.tasks.items():
            writer.writerow(
                [method, task]
                + [
                    values.get(key, float("nan"))
                    for key in ("auc", "logloss", "gauc", "rows", "positives")
                ]
                + [_relative(runs[method], config.out)]
            )
    atomic_write_text(config.out / "results.csv", buffer.getvalue())

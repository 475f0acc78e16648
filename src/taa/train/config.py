"""Configuration dataclasses of ``taa pretrain``, ``adapt``, ``evaluate`` and ``predict``.

Each command's options are generated from these dataclasses (``taa.cli._options``), so
the command line and the Python API take exactly the same settings. Every value is
checked when the config is built; a bad one raises :class:`~taa.errors.ConfigError`
naming the option, the value, what is allowed and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taa.errors import ConfigError
from taa.models.base import ModelConfig

METHODS = ("taa", "finetune", "dann", "target-only", "source-only")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")

#: Fields that may change when a run is resumed; any other difference is refused.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "resume", "overwrite", "quiet", "threads", "device", "compile", "run_dir", "track"}
)
TRACKERS = ("none", "tensorboard")


# The layouts taa.data.readers reads (its LAYOUTS; not imported here to keep this module
# free of the data readers' imports; tests/test_train_cli.py checks they agree).
INPUT_LAYOUTS = ("auto", "tianchi", "processed", "tabular")


def _option(help_text: str, choices: tuple[str, ...] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"help": help_text}
    if choices:
        metadata["choices"] = list(choices)
    return metadata


def _check(condition: bool, option: str, value: Any, allowed: str, fix: str = "") -> None:
    if not condition:
        flag = "--" + option.replace("_", "-")
        raise ConfigError(
            f"option {flag} got {value!r}; allowed: {allowed}" + (f"; {fix}" if fix else "")
        )


@dataclass(kw_only=True)
class RunOptions:
    """Options every training command shares (``pretrain`` and ``adapt``)."""

    dataset: Path = field(metadata=_option("Prepared dataset folder (made by `taa prepare`)."))
    model: str | None = field(
        default=None,
        metadata=_option(
            "Registered model name (mmoe, ple, aitm, ...). pretrain: default mmoe; adapt: "
            "taken from the source checkpoint."
        ),
    )
    epochs: int = field(default=10, metadata=_option("Most epochs to train."))
    batch_size: int = field(
        default=2048,
        metadata=_option("Rows per batch (per domain in adaptation); capped at the split size."),
    )
    lr: float = field(default=1e-3, metadata=_option("Adam learning rate of the model."))
    weight_decay: float = field(default=0.0, metadata=_option("Adam L2 weight decay."))
    task_weights: tuple[float, ...] = field(
        default=(),
        metadata=_option("Weight of each task's loss, in task order (e.g. 1,1); empty: all 1."),
    )
    patience: int = field(
        default=3, metadata=_option("Stop after this many epochs without a better validation.")
    )
    seed: int = field(default=0, metadata=_option("Seed of initialisation, shuffling, splits."))
    device: str = field(
        default="auto", metadata=_option("Where to train: auto picks cuda if present.", DEVICES)
    )
    threads: int = field(
        default=0, metadata=_option("CPU threads for torch; 0 keeps torch's default.")
    )
    precision: str = field(
        default="fp32",
        metadata=_option(
            "bf16: the model runs under torch.autocast (critics in fp32).", PRECISIONS
        ),
    )
    compile: bool = field(default=False, metadata=_option("Wrap the model in torch.compile."))
    quiet: bool = field(default=False, metadata=_option("No progress bars."))
    eval_split: str = field(
        default="test",
        metadata=_option("Split of the evaluated domain scored with the best checkpoint."),
    )
    run_dir: Path | None = field(
        default=None,
        metadata=_option(
            "Run folder; default runs/pretrain-<model>-<domain>-s<seed> or "
            "runs/adapt-<method>-<model>-<source>-<target>-<sample>-s<seed>."
        ),
    )
    resume: bool = field(
        default=False, metadata=_option("Continue an interrupted run in --run-dir.")
    )
    overwrite: bool = field(
        default=False, metadata=_option("Delete an existing --run-dir and start over.")
    )
    track: str = field(
        default="none",
        metadata=_option(
            "Also write each epoch's metrics for a viewer: tensorboard writes "
            "RUN/tensorboard (needs taa[tracking]). Local files only.",
            TRACKERS,
        ),
    )
    streaming: bool = field(
        default=False,
        metadata=_option(
            "Stream the large split (pretrain: the domain's train split; adapt: the source "
            "train split) from Parquet in shuffled batches instead of loading it whole."
        ),
    )
    shuffle_buffer: int = field(
        default=65_536,
        metadata=_option("Rows --streaming mixes together before cutting batches."),
    )
    model_config: ModelConfig | None = field(
        default=None, metadata={"help": "Model sizes (the --model-* options)."}
    )

    def __post_init__(self) -> None:
        self.dataset = Path(self.dataset)
        if self.run_dir is not None:
            self.run_dir = Path(self.run_dir)
        self.task_weights = tuple(float(weight) for weight in self.task_weights)
        _check(
            all(math.isfinite(weight) and weight >= 0 for weight in self.task_weights),
            "task_weights",
            self.task_weights,
            "finite numbers >= 0, one per task",
        )
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer >= 1")
        _check(self.batch_size >= 2, "batch_size", self.batch_size, "an integer >= 2")
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.patience >= 1, "patience", self.patience, "an integer >= 1")
        _check(self.device in DEVICES, "device", self.device, f"one of {list(DEVICES)}")
        _check(self.threads >= 0, "threads", self.threads, "0 (torch default) or more")
        _check(
            self.precision in PRECISIONS, "precision", self.precision, f"one of {list(PRECISIONS)}"
        )
        _check(self.track in TRACKERS, "track", self.track, f"one of {list(TRACKERS)}")
        _check(self.shuffle_buffer >= 1, "shuffle_buffer", self.shuffle_buffer, "an integer >= 1")
        _check(
            not (self.resume and self.overwrite),
            "overwrite",
            True,
            "not together with --resume",
            "choose one",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (paths as strings, tuples as lists)."""
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, ModelConfig):
                value = {key: _plain(entry) for key, entry in value.to_dict().items()}
            data[item.name] = _plain(value)
        return data


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


@dataclass(kw_only=True)
class PretrainConfig(RunOptions):
    """Settings of ``taa pretrain``: train a model on one domain's train split.

    A validation split of ``valid_fraction`` of the train rows is drawn with a seeded
    permutation (stratified by the task labels unless ``stratify`` is off); the epoch
    with the best validation AUC is kept.

    Example:
        >>> PretrainConfig(dataset="data", domain="A", epochs=2).valid_fraction
        0.1
    """

    domain: str = field(metadata=_option("Source domain to train on (e.g. ES, or A)."))
    valid_fraction: float = field(
        default=0.1,
        metadata=_option("Share of the train search pages held out for early stopping."),
    )
    stratify: bool = field(
        default=True,
        metadata=_option("Draw validation pages per label stratum (keeps rare positives)."),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            0.0 < self.valid_fraction < 1.0,
            "valid_fraction",
            self.valid_fraction,
            "a number strictly between 0 and 1",
        )


@dataclass(kw_only=True)
class AdaptConfig(RunOptions):
    """Settings of ``taa adapt``: move a source model to a target domain.

    ``method`` is one of ``taa`` (per-task Wasserstein critics), ``finetune`` (target
    labels only), ``dann`` (gradient reversal and per-task domain classifiers),
    ``target-only`` (same model trained from scratch on the target sample) and
    ``source-only`` (the source model evaluated as it is). See docs/method.md.

    Example:
        >>> config = AdaptConfig(dataset="data", target="B", sample="f0.01-s0",
        ...                      source_checkpoint="runs/p/checkpoints/best.pt")
        >>> config.method, config.critic_steps, config.gp_weight
        ('taa', 5, 10.0)
    """

    target: str = field(metadata=_option("Target domain (e.g. US, or B)."))
    sample: str = field(
        metadata=_option("Target sample name made by `taa sample` (e.g. f0.01-s0).")
    )
    method: str = field(default="taa", metadata=_option("Adaptation method.", METHODS))
    source_checkpoint: Path | None = field(
        default=None,
        metadata=_option(
            "Checkpoint of the source model (a pretrain run's checkpoints/best.pt); "
            "optional only for target-only."
        ),
    )
    source: str | None = field(
        default=None,
        metadata=_option("Source domain; default: the source checkpoint's training domain."),
    )
    critic_steps: int = field(default=5, metadata=_option("Critic updates per model update (taa)."))
    critic_lr: float = field(
        default=1e-3, metadata=_option("Adam learning rate of critics or domain classifiers.")
    )
    critic_hidden: tuple[int, ...] = field(
        default=(64,), metadata=_option("Hidden sizes of each critic or domain classifier.")
    )
    gp_weight: float = field(default=10.0, metadata=_option("Gradient penalty weight (taa)."))
    adversarial_weight: float = field(
        default=0.1,
        metadata=_option("Weight of each task's adversarial term in the model loss (taa, dann)."),
    )
    source_loss_weight: float | None = field(
        default=None,
        metadata=_option(
            "Weight of the labelled source loss in the model step; default 1 for taa and "
            "dann, 0 for finetune; not allowed for target-only and source-only."
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source_checkpoint is not None:
            self.source_checkpoint = Path(self.source_checkpoint)
        self.critic_hidden = tuple(int(size) for size in self.critic_hidden)
        _check(self.method in METHODS, "method", self.method, f"one of {list(METHODS)}")
        _check(
            self.source_checkpoint is not None or self.method == "target-only",
            "source_checkpoint",
            None,
            "a checkpoint path",
            f"method {self.method} starts from a source model: pass --source-checkpoint",
        )
        _check(self.critic_steps >= 1, "critic_steps", self.critic_steps, "an integer >= 1")
        _check(
            math.isfinite(self.critic_lr) and self.critic_lr > 0,
            "critic_lr",
            self.critic_lr,
            "a number > 0",
        )
        _check(
            all(size >= 1 for size in self.critic_hidden),
            "critic_hidden",
            self.critic_hidden,
            "positive sizes such as 64 or 64,32",
        )
        _check(
            math.isfinite(self.gp_weight) and self.gp_weight >= 0,
            "gp_weight",
            self.gp_weight,
            "a finite number >= 0",
        )
        _check(
            math.isfinite(self.adversarial_weight) and self.adversarial_weight >= 0,
            "adversarial_weight",
            self.adversarial_weight,
            "a finite number >= 0",
        )
        if self.source_loss_weight is not None:
            _check(
                math.isfinite(self.source_loss_weight) and self.source_loss_weight >= 0,
                "source_loss_weight",
                self.source_loss_weight,
                "a finite number >= 0",
            )
            _check(
                self.method not in ("target-only", "source-only"),
                "source_loss_weight",
                self.source_loss_weight,
                "only with --method taa, dann or finetune",
                f"{self.method} uses no source labels; drop the option",
            )
        self.check_streaming()

    @property
    def resolved_source_loss_weight(self) -> float:
        """The source loss weight after the method's default is applied."""
        if self.source_loss_weight is not None:
            return self.source_loss_weight
        return 1.0 if self.method in ("taa", "dann") else 0.0

    @property
    def uses_source_rows(self) -> bool:
        """Whether each step also draws a source batch."""
        return self.method in ("taa", "dann") or self.resolved_source_loss_weight > 0

    def check_streaming(self) -> None:
        """``--streaming`` streams the source rows; refuse it where no step uses them."""
        _check(
            not self.streaming or (self.uses_source_rows and self.method != "source-only"),
            "streaming",
            True,
            "only with methods whose steps draw source rows (taa, dann, or finetune with "
            "--source-loss-weight > 0)",
            f"method {self.method} trains on the target sample alone: drop --streaming",
        )


@dataclass(kw_only=True)
class EvaluateConfig:
    """Settings of ``taa evaluate``: score one split with a checkpoint.

    Example:
        >>> EvaluateConfig(checkpoint="best.pt", dataset="data", domain="B").split
        'test'
    """

    checkpoint: Path = field(metadata=_option("Model checkpoint (.pt) to evaluate."))
    dataset: Path = field(metadata=_option("Prepared dataset folder (made by `taa prepare`)."))
    domain: str = field(metadata=_option("Domain whose split is scored."))
    split: str = field(
        default="test",
        metadata=_option("Split: train, test or a sample split such as samples/f0.01-s0/valid."),
    )
    batch_size: int = field(default=8192, metadata=_option("Rows scored per forward pass."))
    device: str = field(default="auto", metadata=_option("Where to score.", DEVICES))
    precision: str = field(default="fp32", metadata=_option("Autocast precision.", PRECISIONS))
    threads: int = field(default=0, metadata=_option("CPU threads; 0 keeps torch's default."))
    output: Path | None = field(
        default=None, metadata=_option("Also write the metrics to this JSON file.")
    )

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        self.dataset = Path(self.dataset)
        if self.output is not None:
            self.output = Path(self.output)
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.device in DEVICES, "device", self.device, f"one of {list(DEVICES)}")
        _check(
            self.precision in PRECISIONS, "precision", self.precision, f"one of {list(PRECISIONS)}"
        )
        _check(self.threads >= 0, "threads", self.threads, "0 (torch default) or more")


OUTPUT_SUFFIXES = (".csv", ".parquet")


@dataclass(kw_only=True)
class PredictConfig:
    """Settings of ``taa predict``: per-task probabilities for every row of a file.

    Example:
        >>> PredictConfig(model="best.pt", dataset="data", input="rows.csv",
        ...               output="scores.parquet").layout
        'auto'
    """

    model: Path = field(
        metadata=_option("Checkpoint (.pt) or a model made by `taa export` (.onnx, TorchScript).")
    )
    dataset: Path = field(
        metadata=_option("Prepared dataset folder whose vocabulary encodes the input.")
    )
    input: Path = field(metadata=_option("File to score (any layout `taa prepare` reads)."))
    output: Path = field(metadata=_option("Output file; .csv or .parquet decides the format."))
    layout: str = field(
        default="auto",
        metadata=_option(
            "Input layout; auto detects it (a raw Tianchi download: its test split is scored).",
            INPUT_LAYOUTS,
        ),
    )
    batch_size: int = field(default=8192, metadata=_option("Rows scored per forward pass."))
    device: str = field(default="auto", metadata=_option("Where to score.", DEVICES))
    precision: str = field(default="fp32", metadata=_option("Autocast precision.", PRECISIONS))
    threads: int = field(default=0, metadata=_option("CPU threads; 0 keeps torch's default."))
    overwrite: bool = field(default=False, metadata=_option("Replace an existing --output file."))

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.dataset = Path(self.dataset)
        self.input = Path(self.input)
        self.output = Path(self.output)
        _check(
            self.output.suffix.lower() in OUTPUT_SUFFIXES,
            "output",
            str(self.output),
            f"a file name ending in {' or '.join(OUTPUT_SUFFIXES)}",
            "the suffix chooses the format",
        )
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.device in DEVICES, "device", self.device, f"one of {list(DEVICES)}")
        _check(
            self.precision in PRECISIONS, "precision", self.precision, f"one of {list(PRECISIONS)}"
        )
        _check(self.threads >= 0, "threads", self.threads, "0 (torch default) or more")

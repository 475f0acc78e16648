"""The grid config file: what a grid crosses and with which training options, checked up front.

A config is TOML or YAML (see ``examples/grid-simulated.toml`` and docs/commands/grid.md).
Every key and value is checked before anything runs, including the options handed to the
trainers, which are built once with placeholder names so that their own checks fire.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taa.errors import ConfigError
from taa.experiments.pipeline import DataSpec

TOP_LEVEL_KEYS = (
    "out",
    "data",
    "models",
    "methods",
    "fractions",
    "seeds",
    "valid_fraction",
    "keep_going",
    "source_per_seed",
    "train",
    "pretrain",
    "adapt",
    "model",
)
#: Options the grid sets itself for every cell; a config may not set them.
GRID_OWNED_OPTIONS = frozenset(
    {
        "dataset",
        "model",
        "model_config",
        "seed",
        "run_dir",
        "resume",
        "overwrite",
        "quiet",
        "domain",
        "target",
        "source",
        "sample",
        "method",
        "source_checkpoint",
    }
)


@dataclass
class GridConfig:
    """A grid over models x methods x target fractions x seeds for one source -> target pair.

    Attributes:
        data: where the source and target domains come from.
        models: registered model names (e.g. ``mmoe``, ``ple``, ``aitm``).
        methods: adaptation methods (``taa``, ``finetune``, ``dann``, ``target-only``,
            ``source-only``).
        fractions: target sample fractions in (0, 1], e.g. ``0.01``.
        seeds: seeds; each seed draws its own target sample and adapts with its own seed.
        source_per_seed: each seed also pretrains its own source model, so the spread over
            seeds includes pretraining (the default); off: one source model per model,
            pretrained with the first seed and shared by all seeds (cheaper; the spread
            then covers the target sample and the adaptation only).
        valid_fraction: share of each target sample held out to select epochs.
        train: options given to both pretraining and adaptation (``epochs``,
            ``batch_size``, ``lr``, ``patience``, ``device``, ...).
        pretrain: options for pretraining only (override ``train``).
        adapt: options for adaptation only (override ``train``; ``critic_steps``, ...).
        model: model sizes (:class:`~taa.models.base.ModelConfig` fields).
        keep_going: a failed cell is logged and the grid goes on (the failures are
            raised together at the end); off: the first failure stops the grid.
        out: default output folder (the command's ``--out`` wins).
    """

    data: DataSpec
    models: tuple[str, ...]
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    valid_fraction: float = 0.2
    train: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    adapt: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    keep_going: bool = True
    source_per_seed: bool = True
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, as written to ``grid.json``."""
        data = dataclasses.asdict(self)
        data["data"] = self.data.to_dict()
        data["out"] = None if self.out is None else str(self.out)
        return data


def _where(source: str, key: str) -> str:
    return f"{source}: {key}" if source else key


def _as_list(value: Any, key: str, source: str) -> list[Any]:
    if isinstance(value, (str, int, float)):
        return [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(
            f"{_where(source, key)} must be a non-empty list, got {value!r}; "
            f'write e.g. {key} = ["a", "b"]'
        )
    return value


def _check_unique(values: list[Any], key: str, source: str) -> None:
    repeated = sorted({str(item) for item in values if values.count(item) > 1})
    if repeated:
        raise ConfigError(f"{_where(source, key)} lists {repeated} more than once; keep one")


def _check_options(options: Any, key: str, source: str, allowed: Iterable[str]) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ConfigError(
            f"{_where(source, key)} must be a table of options, got {type(options).__name__}"
        )
    owned = sorted(set(options) & GRID_OWNED_OPTIONS)
    if owned:
        raise ConfigError(
            f"{_where(source, key)} sets {owned}, which the grid sets for every cell; "
            "remove them (use models, methods, fractions, seeds and data instead)"
        )
    known = set(allowed)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(
            f"{_where(source, key)} has unknown options {unknown}; allowed: "
            f"{sorted(known - GRID_OWNED_OPTIONS)}"
        )
    return dict(options)


def _option_names() -> tuple[set[str], set[str], set[str], set[str]]:
    """Fields of the trainers' configs: (shared, pretrain, adapt, model)."""
    from taa.models.base import ModelConfig
    from taa.train.config import AdaptConfig, PretrainConfig, RunOptions

    def names(config_class: type) -> set[str]:
        return {item.name for item in dataclasses.fields(config_class)}

    return names(RunOptions), names(PretrainConfig), names(AdaptConfig), names(ModelConfig)


def grid_config_from_dict(data: dict[str, Any], source: str = "") -> GridConfig:
    """Build and check a :class:`GridConfig` from parsed TOML or YAML.

    Args:
        data: the parsed file.
        source: the file name, used in error messages.

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range; the message
            names the key and the value and says what is allowed.
    """
    from taa.models.base import available_models
    from taa.train.config import METHODS

    if not isinstance(data, dict):
        raise ConfigError(f"{source or 'grid config'}: expected a table of keys at the top")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{source or 'grid config'}: unknown keys {unknown}; allowed: {list(TOP_LEVEL_KEYS)}"
        )
    for required in ("data", "models", "methods", "fractions", "seeds"):
        if required not in data:
            raise ConfigError(
                f"{source or 'grid config'}: missing key {required!r}; see "
                "examples/grid-simulated.toml for a complete config"
            )

    models = [str(item) for item in _as_list(data["models"], "models", source)]
    choices = available_models()
    for name in models:
        if name not in choices:
            raise ConfigError(
                f"{_where(source, 'models')}: unknown model {name!r}; choose from {choices}"
            )
    _check_unique(models, "models", source)

    methods = [str(item) for item in _as_list(data["methods"], "methods", source)]
    for name in methods:
        if name not in METHODS:
            raise ConfigError(
                f"{_where(source, 'methods')}: unknown method {name!r}; choose from {list(METHODS)}"
            )
    _check_unique(methods, "methods", source)

    fractions = []
    for item in _as_list(data["fractions"], "fractions", source):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ConfigError(f"{_where(source, 'fractions')}: {item!r} is not a number")
        if not 0.0 < float(item) <= 1.0:
            raise ConfigError(
                f"{_where(source, 'fractions')}: {item} is outside (0, 1]; a fraction is a "
                "share of the target train rows, e.g. 0.01 for 1 %"
            )
        fractions.append(float(item))
    _check_unique(fractions, "fractions", source)

    seeds = []
    for item in _as_list(data["seeds"], "seeds", source):
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(
                f"{_where(source, 'seeds')}: {item!r} is not an integer >= 0; write e.g. "
                "seeds = [0, 1, 2]"
            )
        seeds.append(item)
    _check_unique(seeds, "seeds", source)

    valid_fraction = data.get("valid_fraction", 0.2)
    if (
        isinstance(valid_fraction, bool)
        or not isinstance(valid_fraction, (int, float))
        or not (0.0 < float(valid_fraction) < 1.0)
    ):
        raise ConfigError(
            f"{_where(source, 'valid_fraction')} must be a number strictly between 0 and 1, "
            f"got {valid_fraction!r}"
        )

    shared, pretrain_fields, adapt_fields, model_fields = _option_names()
    train = _check_options(data.get("train"), "train", source, shared)
    pretrain = _check_options(data.get("pretrain"), "pretrain", source, pretrain_fields)
    adapt = _check_options(data.get("adapt"), "adapt", source, adapt_fields)
    model = _check_options(data.get("model"), "model", source, model_fields)

    flags = {key: data.get(key, True) for key in ("keep_going", "source_per_seed")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(source, key)} must be true or false, got {value!r}")
    out = data.get("out")
    config = GridConfig(
        data=DataSpec.from_dict(data["data"], source=source),
        models=tuple(models),
        methods=tuple(methods),
        fractions=tuple(fractions),
        seeds=tuple(seeds),
        valid_fraction=float(valid_fraction),
        train=train,
        pretrain=pretrain,
        adapt=adapt,
        model=model,
        keep_going=flags["keep_going"],
        source_per_seed=flags["source_per_seed"],
        out=None if out is None else Path(str(out)),
    )
    _check_trainer_options(config, source)
    return config


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _expected_type(annotation: Any) -> Any:
    """The plain type an option takes (``int``, ``float``, ``str``, ``bool``, ``tuple``)."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        plain = [item for item in typing.get_args(annotation) if item is not type(None)]
        return _expected_type(plain[0]) if len(plain) == 1 else None
    if origin is tuple:
        return tuple
    return annotation if annotation in _TYPE_NAMES else None


def _check_value_types(
    section: str, options: dict[str, Any], config_class: type, source: str
) -> None:
    """Refuse a value of the wrong type, naming the section, the key and the value."""
    import typing

    hints = typing.get_type_hints(config_class)
    for key, value in options.items():
        expected = _expected_type(hints.get(key))
        if expected is None:
            continue
        if expected is tuple:
            fits = isinstance(value, list | tuple) and all(
                isinstance(item, int | float) and not isinstance(item, bool) for item in value
            )
            allowed = "a list of numbers"
        elif expected is float:
            fits = isinstance(value, int | float) and not isinstance(value, bool)
            allowed = _TYPE_NAMES[float]
        elif expected is int:
            fits = isinstance(value, int) and not isinstance(value, bool)
            allowed = _TYPE_NAMES[int]
        else:
            fits = isinstance(value, expected)
            allowed = _TYPE_NAMES[expected]
        if not fits:
            raise ConfigError(
                f"{source or 'grid config'}: [{section}] {key} = {value!r} must be {allowed}"
            )


def _check_trainer_options(config: GridConfig, source: str) -> None:
    """Build each trainer config once with placeholder names so bad values fail up front."""
    from taa.models.base import ModelConfig
    from taa.train.config import AdaptConfig, PretrainConfig

    for section, options, config_class in (
        ("train", config.train, PretrainConfig),
        ("pretrain", config.pretrain, PretrainConfig),
        ("adapt", config.adapt, AdaptConfig),
        ("model", config.model, ModelConfig),
    ):
        _check_value_types(section, options, config_class, source)
    try:
        model_config = ModelConfig.from_dict(config.model)
        PretrainConfig(
            dataset=Path("."),
            domain="source",
            model_config=model_config,
            **{**config.train, **config.pretrain},
        )
        for method in config.methods:
            AdaptConfig(
                dataset=Path("."),
                target="target",
                sample="sample",
                method=method,
                source_checkpoint=Path("best.pt"),
                model_config=model_config,
                **{**config.train, **config.adapt},
            )
    except ConfigError as error:
        raise ConfigError(f"{source or 'grid config'}: {error}") from error
    except TypeError as error:
        raise ConfigError(f"{source or 'grid config'}: bad option value ({error})") from error


def load_grid_config(path: str | Path) -> GridConfig:
    """Read a grid config from a ``.toml``, ``.yaml`` or ``.yml`` file.

    Raises:
        ConfigError: the file is missing, cannot be parsed, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"grid config {path} not found; pass a .toml or .yaml file")
    suffix = path.suffix.lower()
    text = path.read_text()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"grid config {path}: unknown suffix {suffix!r}; use .toml, .yaml or .yml"
            )
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"grid config {path}: not valid TOML ({error})") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"grid config {path}: not valid YAML ({error})") from error
    return grid_config_from_dict(data, source=str(path))

"""The steps the demo and the grids chain: data, target sample, pretraining and adaptation.

Each step is skipped when its output is already complete, so an interrupted demo or grid
picks up where it stopped:

* data: ``WORK/simulated/`` (when simulating) and the prepared ``WORK/dataset/``, kept
  while ``WORK/data.json`` records the same :class:`DataSpec`;
* a target sample: kept while its ``sample.json`` records the same fraction, seed and
  validation share;
* a run (pretraining or adaptation): finished when its folder holds ``final_metrics.json``;
  a folder with ``checkpoints/last.pt`` but no final metrics is resumed, any other
  leftover folder is started over.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from taa.errors import ConfigError, DataError
from taa.experiments.results import is_finished, read_json
from taa.io import atomic_write_json

logger = logging.getLogger(__name__)

DATA_RECORD = "data.json"
SIMULATED_FOLDER = "simulated"
DATASET_FOLDER = "dataset"
_DOMAIN_NAME = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass
class DataSpec:
    """Where a source -> target pair comes from: simulated, processed folders or prepared.

    * ``simulate`` true: ``source`` and ``target`` are country codes for the simulator
      (``rows``, ``shift``, ``simulate_seed`` set it), e.g. ``es`` and ``us``;
    * ``dataset`` given: a folder made by ``taa prepare``; ``source`` and ``target`` are
      two of its domains;
    * otherwise ``source`` and ``target`` are folders in the processed layout
      (``train.csv`` and ``test.csv`` with 82 columns, e.g. ``AliExpress_ES``).

    Attributes:
        source: source country code, domain name or folder.
        target: target country code, domain name or folder.
        dataset: an existing prepared dataset, or ``None``.
        simulate: simulate both countries.
        rows: simulated item rows per country (train and test together).
        shift: simulated distance between countries, 0 to 1.
        simulate_seed: seed of the simulator.
    """

    source: str
    target: str
    dataset: Path | None = None
    simulate: bool = False
    rows: int = 200_000
    shift: float = 0.5
    simulate_seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset is not None:
            self.dataset = Path(self.dataset)
        if self.simulate and self.dataset is not None:
            raise ConfigError(
                "data: simulate = true and dataset = ... exclude each other; keep one"
            )
        if self.source == self.target:
            raise ConfigError(
                f"data: source and target are both {self.source!r}; adaptation needs two "
                "different domains"
            )
        if self.simulate:
            if self.rows < 100:
                raise ConfigError(f"data: rows must be at least 100 to simulate, got {self.rows}")
            if not 0.0 <= self.shift <= 1.0:
                raise ConfigError(f"data: shift must be in [0, 1], got {self.shift}")

    def check_inputs(self) -> None:
        """Refuse a pair whose data is not there, before anything is written.

        A prepared ``dataset`` must hold a schema listing both domains; processed-layout
        ``source`` and ``target`` must be folders. Simulated pairs need nothing.
        """
        if self.simulate:
            return
        if self.dataset is not None:
            from taa.data.schema import Schema

            domains = Schema.load(self.dataset).domains
            for role, name in (("source", self.source), ("target", self.target)):
                if domains and name not in domains:
                    raise ConfigError(
                        f"data: {role} {name!r} is not a domain of {self.dataset}; "
                        f"choose one of {list(domains)}"
                    )
            return
        for role, name in (("source", self.source), ("target", self.target)):
            if not Path(name).is_dir():
                raise ConfigError(
                    f"data: {role} {name!r} is not a folder; give a processed-layout folder "
                    "(train.csv and test.csv), or set dataset = ... or simulate = true"
                )

    @property
    def kind(self) -> str:
        """``simulate``, ``prepared`` or ``processed``."""
        if self.simulate:
            return "simulate"
        return "prepared" if self.dataset is not None else "processed"

    def describe(self) -> str:
        """A short human description, e.g. ``simulated ES -> US (shift 0.5, 200000 rows)``."""
        if self.simulate:
            return (
                f"simulated {self.source.upper()} -> {self.target.upper()} "
                f"(shift {self.shift:g}, {self.rows} rows per country, seed {self.simulate_seed})"
            )
        if self.dataset is not None:
            return f"{self.source} -> {self.target} of {self.dataset}"
        return f"{self.source} -> {self.target}"

    def to_dict(self) -> dict[str, Any]:
        """The ``[data]`` table of a grid config that gives back this spec."""
        data = asdict(self)
        data["dataset"] = None if self.dataset is None else str(self.dataset)
        data["seed"] = data.pop("simulate_seed")
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> DataSpec:
        """Read the ``[data]`` table of a grid config.

        Keys: ``source``, ``target`` (required), ``simulate``, ``rows``, ``shift``,
        ``seed`` (of the simulator), ``dataset``.
        """
        where = f"{source}: data" if source else "data"
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be a table with source and target, got {data!r}")
        allowed = {"source", "target", "simulate", "rows", "shift", "seed", "dataset"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
        for key in ("source", "target"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise ConfigError(
                    f"{where}.{key} must be a country code (with simulate = true), a domain "
                    f"of dataset, or a processed folder; got {data.get(key)!r}"
                )
        types = {"simulate": bool, "rows": int, "shift": (int, float), "seed": int}
        for key, expected in types.items():
            value = data.get(key)
            wrong_bool = expected is not bool and isinstance(value, bool)
            if value is not None and (not isinstance(value, expected) or wrong_bool):
                raise ConfigError(f"{where}.{key} has the wrong type: {value!r}")
        try:
            return cls(
                source=data["source"].strip(),
                target=data["target"].strip(),
                dataset=data.get("dataset"),
                simulate=bool(data.get("simulate", False)),
                rows=int(data.get("rows", 200_000)),
                shift=float(data.get("shift", 0.5)),
                simulate_seed=int(data.get("seed", 0)),
            )
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}" if source else str(error)) from error


@dataclass(frozen=True)
class PreparedPair:
    """A prepared dataset holding a source and a target domain."""

    dataset: Path
    source: str
    target: str


def sample_name(fraction: float, seed: int) -> str:
    """Name of the target sample of ``fraction`` and ``seed``, e.g. ``f0.01-s0``."""
    return f"f{fraction:g}-s{seed}"


def domain_name(folder: Path) -> str:
    """A domain name for a processed folder: ``AliExpress_ES`` -> ``ES``, ``data/A`` -> ``A``."""
    name = folder.resolve().name
    name = re.sub(r"^aliexpress_", "", name, flags=re.IGNORECASE)
    return _DOMAIN_NAME.sub("-", name).strip("-") or "domain"


def _run_state(run_dir: Path) -> dict[str, bool]:
    """How to start the trainer on ``run_dir``: resume a half run, else start over."""
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return {"resume": True, "overwrite": False}
    return {"resume": False, "overwrite": run_dir.exists()}


class PipelineSteps:
    """The real steps: the simulator, ``prepare_dataset``, ``draw_sample`` and the trainers.

    Args:
        quiet: turn off the trainers' progress bars.
        device: training device (``auto``, ``cpu``, ``cuda``) unless options set one.
    """

    def __init__(self, quiet: bool = True, device: str | None = None) -> None:
        self.quiet = quiet
        self.device = device

    def prepare(self, spec: DataSpec, work: Path) -> PreparedPair:
        """Simulate (if asked) and prepare both domains into ``WORK/dataset``, or reuse them."""
        if spec.dataset is not None:
            return self._check_domains(PreparedPair(spec.dataset, spec.source, spec.target))
        record_path = work / DATA_RECORD
        dataset = work / DATASET_FOLDER
        if record_path.is_file() and (dataset / "schema.json").is_file():
            record = read_json(record_path)
            if record.get("spec") != spec.to_dict():
                raise ConfigError(
                    f"{work} holds data made with other settings ({record.get('spec')}); "
                    f"now asked for {spec.to_dict()}: use another output folder or delete {work}"
                )
            logger.info("reusing the prepared dataset %s", dataset)
            return PreparedPair(dataset, record["source"], record["target"])

        if spec.kind == "simulate":
            folders = self._simulate(spec, work / SIMULATED_FOLDER)
            source_folder = folders[spec.source.upper()]
            target_folder = folders[spec.target.upper()]
            source, target = spec.source.upper(), spec.target.upper()
        else:
            source_folder, target_folder = Path(spec.source), Path(spec.target)
            for role, folder in (("source", source_folder), ("target", target_folder)):
                if not folder.is_dir():
                    raise DataError(
                        f"data {role} folder {folder} does not exist; give a folder with "
                        "train.csv and test.csv in the processed layout"
                    )
            source, target = domain_name(source_folder), domain_name(target_folder)
            if source == target:
                source, target = f"{source}-source", f"{target}-target"
        self._prepare(dataset, {source: source_folder, target: target_folder})
        atomic_write_json(record_path, {"spec": spec.to_dict(), "source": source, "target": target})
        return PreparedPair(dataset, source, target)

    def _check_domains(self, pair: PreparedPair) -> PreparedPair:
        from taa.data.schema import Schema

        domains = Schema.load(pair.dataset).domains
        for role, name in (("source", pair.source), ("target", pair.target)):
            if domains and name not in domains:
                raise ConfigError(
                    f"data {role} {name!r} is not a domain of {pair.dataset}; its domains are "
                    f"{list(domains)}"
                )
        return pair

    def _simulate(self, spec: DataSpec, folder: Path) -> dict[str, Path]:
        from taa.data.simulate import SimulateConfig, simulate_countries

        logger.info("simulating %s into %s", spec.describe(), folder)
        config = SimulateConfig(
            out=folder,
            countries=(spec.source.lower(), spec.target.lower()),
            rows=spec.rows,
            shift=spec.shift,
            seed=spec.simulate_seed,
            layout="processed",
            overwrite=True,
        )
        return simulate_countries(config)

    def _prepare(self, dataset: Path, domains: dict[str, Path]) -> None:
        from taa.data.prepare import PrepareConfig, prepare_dataset

        logger.info("preparing %s into %s", ", ".join(domains), dataset)
        prepare_dataset(
            PrepareConfig(
                out=dataset,
                domains=tuple(f"{name}={path}" for name, path in domains.items()),
                overwrite=True,
                quiet=self.quiet,
            )
        )

    def sample(self, pair: PreparedPair, fraction: float, seed: int, valid_fraction: float) -> str:
        """Draw (or reuse) the target sample of ``fraction`` and ``seed``; return its name."""
        from taa.data.sample import draw_sample

        name = sample_name(fraction, seed)
        record = pair.dataset / pair.target / "samples" / name / "sample.json"
        if record.is_file():
            info = read_json(record)
            same = (
                float(info.get("fraction", -1)) == fraction
                and int(info.get("seed", -1)) == seed
                and float(info.get("valid_fraction", -1)) == valid_fraction
            )
            if same:
                return name
            logger.warning("sample %s was drawn with other settings; drawing it again", record)
        draw_sample(
            pair.dataset,
            pair.target,
            fraction=fraction,
            seed=seed,
            valid_fraction=valid_fraction,
            name=name,
        )
        return name

    def _common(self, options: dict[str, Any]) -> dict[str, Any]:
        values = dict(options)
        values.setdefault("quiet", self.quiet)
        if self.device is not None:
            values.setdefault("device", self.device)
        return values

    def pretrain(
        self, pair: PreparedPair, model: str, seed: int, run_dir: Path, options: dict[str, Any]
    ) -> Path:
        """Train ``model`` on the source (or reuse a finished run); return its best checkpoint."""
        from taa.models.base import ModelConfig
        from taa.train import PretrainConfig, pretrain

        best = run_dir / "checkpoints" / "best.pt"
        if is_finished(run_dir) and best.is_file():
            return best
        values = self._common(options)
        model_config = values.pop("model_config", None)
        if isinstance(model_config, dict):
            model_config = ModelConfig.from_dict(model_config)
        config = PretrainConfig(
            dataset=pair.dataset,
            domain=pair.source,
            model=model,
            seed=seed,
            run_dir=run_dir,
            model_config=model_config,
            **_run_state(run_dir),
            **values,
        )
        logger.info("pretraining %s on %s (seed %d) in %s", model, pair.source, seed, run_dir)
        result = pretrain(config)
        return Path(result.best_checkpoint)

    def adapt(
        self,
        pair: PreparedPair,
        method: str,
        sample: str,
        seed: int,
        source_checkpoint: Path,
        run_dir: Path,
        options: dict[str, Any],
    ) -> Path:
        """Adapt the source model to the target sample (or reuse a finished run)."""
        from taa.train import AdaptConfig, adapt

        if is_finished(run_dir):
            return run_dir
        config = AdaptConfig(
            dataset=pair.dataset,
            target=pair.target,
            source=pair.source,
            sample=sample,
            method=method,
            source_checkpoint=source_checkpoint,
            seed=seed,
            run_dir=run_dir,
            **_run_state(run_dir),
            **self._common(options),
        )
        logger.info(
            "adapting with %s on %s/%s (seed %d) in %s", method, pair.target, sample, seed, run_dir
        )
        adapt(config)
        return run_dir

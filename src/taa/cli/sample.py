"""``taa sample``: a reproducible, label-stratified target sample and its validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.data.sample import SampleConfig


@click.command(name="sample")
@click.argument("dataset", type=click.Path(path_type=Path))
@dataclass_options(SampleConfig)
def command(dataset: Path, **options: Any) -> None:
    """Draw --fraction of DATASET's --domain train rows, stratified by the task labels.

    Each label stratum keeps round(fraction x its rows) rows, at least one; a validation
    part (--valid-fraction of each stratum's draw, at least one row where the stratum drew
    two) is set aside. Writes DATASET/<domain>/samples/<name>/train.parquet, valid.parquet
    and sample.json; train on it with the split samples/<name>/train. The test split is
    never read. See docs/commands/sample.md.
    """
    from taa.data.sample import draw_sample

    config = config_from_options(SampleConfig, options)
    info = draw_sample(
        dataset,
        config.domain,
        fraction=config.fraction,
        seed=config.seed,
        valid_fraction=config.valid_fraction,
        name=config.name,
    )
    click.echo(
        f"sample {info.name} of {info.domain}: {info.train_rows} train + {info.valid_rows} "
        f"valid rows of {info.source_rows} -> {info.directory}"
    )
    for item in info.strata:
        labels = ", ".join(
            f"{task}={value}" for task, value in zip(info.tasks, item.labels, strict=True)
        )
        click.echo(f"  {labels}: {item.train} train + {item.valid} valid of {item.population}")

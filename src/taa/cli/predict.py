"""``taa predict``: per-task probabilities for every row of a file."""

from __future__ import annotations

from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.train.config import PredictConfig


@click.command(name="predict")
@dataclass_options(PredictConfig)
def command(**options: Any) -> None:
    """Score --input with --model and write --output (.csv or .parquet).

    The input may be in any layout `taa prepare` reads; it is encoded with --dataset's
    vocabulary (unseen categories become the out-of-vocabulary index). The output holds
    the input's id columns and one <task>_probability column per task. --model is a
    checkpoint (.pt) or a file made by `taa export`. See docs/commands/predict.md.
    """
    from taa.train.predict import predict

    config = config_from_options(PredictConfig, options)
    path = predict(config)
    click.echo(f"wrote {path}")

"""``taa evaluate``: per-task AUC, log-loss and group AUC of a checkpoint on one split."""

from __future__ import annotations

import json
import math
from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.train.config import EvaluateConfig


@click.command(name="evaluate")
@dataclass_options(EvaluateConfig)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def command(as_json: bool, **options: Any) -> None:
    """Score --domain's --split of --dataset with --checkpoint.

    Every row is scored first; AUC, log-loss and group AUC (by search_id) are then
    computed once over the whole split. A task whose labels are all one class gets AUC
    nan and a warning. See docs/commands/evaluate.md.
    """
    from taa.distributed import current
    from taa.train.evaluate import evaluate

    config = config_from_options(EvaluateConfig, options)
    result = evaluate(config)
    if not current().is_main:
        return
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['model']} on {result['domain']}/{result['split']}:")
    for task, values in result["tasks"].items():
        auc = "nan (one class)" if math.isnan(values["auc"]) else f"{values['auc']:.4f}"
        click.echo(
            f"  {task:<12} AUC {auc}  log-loss {values['logloss']:.4f}  "
            f"GAUC {values['gauc']:.4f}  ({values['positives']} of {values['rows']} positive)"
        )

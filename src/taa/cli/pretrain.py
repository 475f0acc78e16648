"""``taa pretrain``: train a multi-task model on a source domain."""

from __future__ import annotations

from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.models.base import ModelConfig
from taa.train.config import PretrainConfig


def explicit_model_config(ctx: click.Context, options: dict[str, Any]) -> ModelConfig | None:
    """A :class:`ModelConfig` from the ``--model-*`` options the user gave, else ``None``."""
    given = [
        name
        for name in options
        if name.startswith("model_")
        and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    ]
    if not given:
        return None
    return config_from_options(ModelConfig, options, prefix="model_")


def split_options(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """The trainer options with ``model_config`` built from the ``--model-*`` options."""
    model_config = explicit_model_config(ctx, options)
    trainer = {key: value for key, value in options.items() if not key.startswith("model_")}
    trainer["quiet"] = bool(trainer.get("quiet")) or bool((ctx.obj or {}).get("quiet"))
    trainer["model_config"] = model_config
    return trainer


def echo_final(final: dict[str, Any], run_dir: Any) -> None:
    """Print the final metrics of a run as a small table (rank 0 only under torchrun)."""
    from taa.distributed import current

    if not current().is_main:
        return
    click.echo(
        f"{final['method']} {final['model']}: best epoch {final['best_epoch']} of "
        f"{final['epochs_run']}; {final['domain']}/{final['split']}:"
    )
    for task, values in final["tasks"].items():
        click.echo(
            f"  {task:<12} AUC {values['auc']:.4f}  log-loss {values['logloss']:.4f}  "
            f"GAUC {values['gauc']:.4f}  ({values['positives']} of {values['rows']} positive)"
        )
    click.echo(f"run folder: {run_dir}")


@click.command(name="pretrain")
@dataclass_options(PretrainConfig, exclude=("model_config",))
@dataclass_options(ModelConfig, prefix="model_")
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:
    """Train --model on --domain's train split of --dataset, keeping the best epoch.

    A validation split of --valid-fraction of the train rows (whole search pages,
    stratified by label) picks the epoch; the best checkpoint is then scored on
    --eval-split. Writes a run folder (default runs/pretrain-<model>-<domain>-s<seed>)
    with checkpoints/best.pt for `taa adapt --source-checkpoint`. See
    docs/commands/pretrain.md.
    """
    from taa.train.pretrain import pretrain

    config = config_from_options(PretrainConfig, split_options(ctx, options))
    result = pretrain(config)
    echo_final(result.final_metrics, result.run_dir)

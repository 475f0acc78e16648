"""``taa adapt``: adapt a source model to a target domain with TAA or a baseline."""

from __future__ import annotations

from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.cli.pretrain import echo_final, split_options
from taa.models.base import ModelConfig
from taa.train.config import AdaptConfig


@click.command(name="adapt")
@dataclass_options(AdaptConfig, exclude=("model_config",))
@dataclass_options(ModelConfig, prefix="model_")
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:
    """Adapt --source-checkpoint to --target with --method, on the sample --sample.

    Methods: taa (per-task Wasserstein critics), finetune (target labels only), dann
    (gradient reversal), target-only (same model from scratch; --model and --model-*
    set it when no checkpoint is given) and source-only (no training). The sample's
    train split trains, its valid split picks the epoch; the best checkpoint is scored
    on the target's --eval-split (test). See docs/commands/adapt.md and docs/method.md.
    """
    from taa.train.adapt import adapt

    config = config_from_options(AdaptConfig, split_options(ctx, options))
    result = adapt(config)
    echo_final(result.final_metrics, result.run_dir)

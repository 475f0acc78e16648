"""``taa prepare``: turn raw downloads, processed folders or tables into a prepared dataset."""

from __future__ import annotations

from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.data.prepare import PrepareConfig, prepare_dataset, summary_lines


@click.command(
    "prepare",
    help=(
        "Prepare one or more domains into one dataset folder (schema.json, vocabulary.json, "
        "<domain>/train.parquet and test.parquet).\n\n"
        "Example: taa prepare --out data --domain NL=aliexpress_NL_datasets.zip "
        "--domain ES=AliExpress_ES"
    ),
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    required=True,
    help=PrepareConfig.__dataclass_fields__["domains"].metadata["help"],
)
@dataclass_options(PrepareConfig, exclude=("domains",))
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:
    """Run ``prepare_dataset`` and print a short summary."""
    options["quiet"] = options.get("quiet") or bool((ctx.obj or {}).get("quiet", False))
    config = config_from_options(PrepareConfig, options)
    schema = prepare_dataset(config)
    click.echo(
        f"prepared {len(schema.domains)} domains into {config.out} (schema {schema.digest()})"
    )
    for line in summary_lines(schema):
        click.echo(line)

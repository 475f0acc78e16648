"""``taa demo``: the whole pipeline on simulated (or given) data, ending with a table."""

from __future__ import annotations

import sys
from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.experiments.demo import DemoConfig


@click.command(name="demo")
@dataclass_options(DemoConfig)
@click.pass_context
def command(ctx: click.Context, **options: Any) -> None:
    """Simulate two countries, pretrain, adapt with each method and print a table.

    With --source and --target (processed-layout folders) it runs on those rows instead
    of simulated ones. Running it again with the same options reuses finished steps.
    """
    from taa.experiments.demo import run_demo

    config = config_from_options(DemoConfig, options)
    quiet = bool((ctx.obj or {}).get("quiet", False))
    show = not quiet and sys.stderr.isatty()
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=1, desc="taa demo", file=sys.stderr, position=0, leave=True)

        def on_step(label: str, index: int, total: int) -> None:
            bar.total = total
            bar.n = index
            bar.set_description(f"demo: {label}")
            bar.refresh()

        try:
            result = run_demo(config, progress=True, on_step=on_step)
            bar.n = bar.total
            bar.set_description("demo: done")
        finally:
            bar.close()
    else:
        result = run_demo(config, progress=False)

    click.echo("")
    click.echo(f"taa demo: {result.pair.target} test split, per-task AUC and log-loss per method")
    click.echo(result.table.to_text())
    for note in result.table.notes:
        click.echo(note)
    click.echo("")
    click.echo(f"work folder: {result.out}")
    click.echo(f"dataset:     {result.pair.dataset}")
    for method, path in result.runs.items():
        click.echo(f"run {method + ':':<13}{path}")
    click.echo(f"table:       {result.out / 'results.md'} (and results.csv)")
    if result.report is not None:
        click.echo(f"report:      {result.report.html} (and {result.report.markdown.name})")
    click.echo(f"time:        {result.seconds.get('total', 0.0):.0f} s")

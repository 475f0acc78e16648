"""``taa grid CONFIG``: a resumable grid of models x methods x fractions x seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(name="grid")
@click.argument("config_file", metavar="CONFIG", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Output folder (default: the config's `out`, else runs/grid).",
)
@click.option("--dry-run", is_flag=True, help="Check the config and list the cells; train nothing.")
@click.pass_context
def command(ctx: click.Context, config_file: Path, out: Path | None, dry_run: bool) -> None:
    """Run every unfinished cell of the grid in CONFIG (TOML or YAML), then summarise.

    Cells whose run folder holds final_metrics.json are skipped, so running the same
    command again continues an interrupted grid. See docs/commands/grid.md.
    """
    from taa.experiments.grid import cell_dir, cells_of, load_grid_config, run_grid

    config = load_grid_config(config_file)
    target = out or config.out or Path("runs") / "grid"
    cells = cells_of(config)
    config.data.check_inputs()
    if dry_run:
        click.echo(f"{len(cells)} cells, output {target}:")
        for cell in cells:
            state = "done" if (cell_dir(target, cell) / "final_metrics.json").is_file() else "todo"
            click.echo(f"  {state}  {cell.name}")
        return

    quiet = bool((ctx.obj or {}).get("quiet", False))
    on_cell = None
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), desc="grid", unit="cell", file=sys.stderr)

        def on_cell(cell: object, state: str) -> None:
            bar.set_postfix_str(f"{getattr(cell, 'name', '')} {state}")
            bar.update(1)

    try:
        result = run_grid(config, target, on_cell=on_cell)
    finally:
        if bar is not None:
            bar.close()
    click.echo(
        f"grid: {len(result.ran)} cells trained, {len(result.skipped)} already finished, "
        f"{len(result.cells)} in all"
    )
    click.echo(f"results: {result.results_csv}")
    click.echo(f"summary: {result.summary_markdown} (and {result.summary_csv.name})")
    for path in result.plots:
        click.echo(f"plot:    {path}")
    click.echo(f"report:  taa report {target}")

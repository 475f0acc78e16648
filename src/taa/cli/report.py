"""``taa report``: an HTML page and a Markdown file for a run, demo or grid folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="report")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to write report.html, report.md and plots/ (default FOLDER/report).",
)
@click.option(
    "--projection-rows",
    type=click.IntRange(min=0),
    default=2000,
    show_default=True,
    help="Rows per domain in a demo's feature projection; 0 leaves the projection out.",
)
def command(folder: Path, out: Path | None, projection_rows: int) -> None:
    """Write a self-contained HTML report (plots embedded) and a Markdown one for FOLDER.

    FOLDER is a run folder (from pretrain or adapt), a demo folder or a grid folder. A
    folder holding no run metrics yet is refused (exit status 2) and nothing is written.
    """
    from taa.experiments.report import write_report
    from taa.experiments.tables import count_of

    result = write_report(folder, out, projection_rows=projection_rows)
    click.echo(f"{result.kind} report: {result.html}")
    click.echo(f"markdown:      {result.markdown} ({count_of(len(result.images), 'plot')})")

"""Entry point of the ``taa`` command. Subcommands are imported only when run.

Each subcommand lives in its own module ``taa.cli.<name>`` and exposes a click command
called ``command``; loading them lazily keeps ``taa --help`` fast (no torch import).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

import click

from taa import __version__
from taa.errors import TaaError, TaaWarning

# name -> (module, one-line help shown by `taa --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "simulate": (
        "taa.cli.simulate",
        "Write simulated AliExpress-like countries (raw and processed).",
    ),
    "prepare": ("taa.cli.prepare", "Turn raw downloads or tables into a prepared dataset."),
    "sample": (
        "taa.cli.sample",
        "Draw a reproducible stratified target sample and its validation split.",
    ),
    "pretrain": ("taa.cli.pretrain", "Train a multi-task model on a source domain."),
    "adapt": ("taa.cli.adapt", "Adapt a source model to a target domain (taa or a baseline)."),
    "evaluate": ("taa.cli.evaluate", "Per-task AUC, log-loss and group AUC of a model on a split."),
    "predict": ("taa.cli.predict", "Score a file with a checkpoint or an exported model."),
    "export": ("taa.cli.export", "Export a model to ONNX or TorchScript with its schema."),
    "demo": (
        "taa.cli.demo",
        "Run the whole pipeline on simulated (or given) data and print a table.",
    ),
    "grid": ("taa.cli.grid", "Run a resumable grid of models x methods x fractions x seeds."),
    "report": ("taa.cli.report", "Write an HTML and Markdown report of a run or a grid."),
}


#: Iterations an idle OpenMP thread spins before it sleeps (libgomp's default is 300,000).
SPIN_COUNT = "1000"


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module_name, short_help = SUBCOMMANDS[cmd_name]
        command: click.Command = importlib.import_module(module_name).command
        command.short_help = command.short_help or short_help
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short_help) for name, (_, short_help) in SUBCOMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taa")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Task-Adversarial Adaptation of multi-task recommendation models."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.formatwarning = format_warning
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet


def format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """taa's own warnings as one line for people at the command line (no source line of
    the library); other warnings keep Python's format, location included."""
    if issubclass(category, TaaWarning):
        return f"warning: {message} ({category.__name__})\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def prefer_sleeping_threads() -> None:
    """Let idle OpenMP threads spin only briefly, then sleep; acts only before torch loads.

    torch's OpenMP runtime (libgomp) reads ``GOMP_SPINCOUNT`` once, when torch is
    imported, so this only acts when called before the first ``import torch`` (the
    subcommands load torch lazily). By default an idle thread spins long at the end of
    every operation; as soon as anything else needs a core (DataLoader workers, another
    job, a shared CI machine) the spinning threads take it from the threads with work.
    A spin count of 1000 keeps an idle machine as fast as the default and was 2.4x faster
    for a small model's TAA step beside one busy process (docs/performance.md). An
    explicit ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is kept.
    """
    if "torch" in sys.modules:
        return
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; ``main(["demo", "--help"])`` works from tests."""
    prefer_sleeping_threads()
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="taa", standalone_mode=False
        )
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Exit as exit_:
        if exit_.exit_code:
            sys.exit(exit_.exit_code)
    except TaaError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)

"""``taa simulate``: write simulated AliExpress-like countries in the raw and processed layouts."""

from __future__ import annotations

import json
from typing import Any

import click

from taa.cli._options import config_from_options, dataclass_options
from taa.data.simulate import SimulateConfig


def _countries(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[str, ...]:
    if isinstance(value, tuple):
        return value
    return tuple(part.strip() for part in str(value).split(",") if part.strip())


@click.command(name="simulate")
@dataclass_options(SimulateConfig, exclude=("countries",))
@click.option(
    "--countries",
    default="es,fr,nl,us",
    show_default=True,
    callback=_countries,
    help=SimulateConfig.__dataclass_fields__["countries"].metadata["help"],
)
def command(**options: Any) -> None:
    """Write simulated countries to --out: raw Tianchi zips and/or processed 82-column CSVs.

    Rows look like the AliExpress search log (16 categorical and 63 numerical fields, about
    2 % clicks and 0.07 % purchases, 5-30 items per result page). --shift moves the
    countries apart (feature distributions and what predicts a click); 0 makes them
    identical but for categorical_1. Rates and true-weight AUCs go to OUT/simulation.json.
    See docs/commands/simulate.md.
    """
    from taa.data.simulate import simulate_countries

    config = config_from_options(SimulateConfig, options)
    paths = simulate_countries(config)
    summary = json.loads((config.out / "simulation.json").read_text())["countries"]
    for code, path in paths.items():
        train = summary[code]["train"]
        click.echo(
            f"{code}: {train['rows']} train rows, CTR {train['click_rate']:.4f}, "
            f"CTCVR {train['conversion_rate']:.5f} -> {path}"
        )

"""Build click options from config dataclasses, so the CLI and the library share one source.

A dataclass field becomes ``--field-name``; its ``metadata["help"]`` is the help text and
``metadata["choices"]`` restricts the values. Tuples of ints are given comma-separated
(``--expert-hidden 512,256``); booleans become ``--flag/--no-flag`` pairs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


class IntTuple(click.ParamType):
    """A comma-separated list of integers, such as ``512,256``."""

    name = "INTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(int(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers (e.g. 512,256)")


class FloatTuple(click.ParamType):
    """A comma-separated list of numbers, such as ``1.0,0.5``."""

    name = "FLOATS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers (e.g. 1.0,0.5)")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [item for item in typing.get_args(annotation) if item is not type(None)]
        if len(arguments) == 1:
            return arguments[0], True
    return annotation, False


def _click_type(annotation: Any, choices: list[str] | None) -> Any:
    if choices:
        return click.Choice(choices)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return click.Choice([str(item) for item in typing.get_args(annotation)])
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        return FloatTuple() if item_type is float else IntTuple()
    if annotation in (int, float, str):
        return annotation
    if annotation is Path:
        return click.Path(path_type=Path)
    return str


def dataclass_options(
    config_class: type, *, exclude: tuple[str, ...] = (), prefix: str = ""
) -> Callable[[F], F]:
    """Decorator adding one click option per field of ``config_class``.

    Fields without a default become required options. ``prefix`` is prepended to each
    option and parameter name (``prefix="model_"`` gives ``--model-dropout``).
    """
    hints = typing.get_type_hints(config_class)

    def decorate(function: F) -> F:
        for item in reversed(dataclasses.fields(config_class)):
            if item.name in exclude or not item.init:
                continue
            annotation, optional = _unwrap_optional(hints[item.name])
            name = prefix + item.name
            help_text = item.metadata.get("help", "")
            has_default = (
                item.default is not dataclasses.MISSING
                or item.default_factory is not dataclasses.MISSING
            )
            default = (
                item.default
                if item.default is not dataclasses.MISSING
                else (item.default_factory() if has_default else None)  # type: ignore[misc]
            )
            if annotation is bool:
                flag = _option_name(name)
                negative = "--no-" + name.replace("_", "-")
                option = click.option(
                    f"{flag}/{negative}", name, default=default, show_default=True, help=help_text
                )
            else:
                click_type = _click_type(annotation, item.metadata.get("choices"))
                shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
                option = click.option(
                    _option_name(name),
                    name,
                    type=click_type,
                    default=shown if has_default else None,
                    required=not has_default and not optional,
                    show_default=has_default and default is not None,
                    help=help_text,
                )
            function = option(function)
        return function

    return decorate


def config_from_options(config_class: type, options: dict[str, Any], prefix: str = "") -> Any:
    """Build ``config_class`` from the keyword arguments click passed to a command."""
    values = {}
    for item in dataclasses.fields(config_class):
        key = prefix + item.name
        if item.init and key in options and options[key] is not None:
            values[item.name] = options[key]
    return config_class(**values)

"""What the `dapo` commands share (typer): running a command line, parsing a service's options into its
settings, and turning a bad setting into a usage error (exit status 2) that names the field.

Importing this imports neither torch nor vLLM; `dapo --help` answers before either loads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel

Settings = TypeVar("Settings", bound="BaseModel")
Flags = dict[str, Any]
"""What a service's typer options were given (None: not given), before its settings model is imported."""

SettingsFile = typer.Option(
    "--settings",
    help="JSON/YAML file of the service's settings (`dapo run` writes one per service); flags win over it",
    show_default=False,
)


def new_app(help_text: str) -> typer.Typer:
    """A typer app with plain (not rich) help and errors, so both stay greppable and quick."""
    return typer.Typer(
        help=help_text,
        rich_markup_mode=None,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def run_app(app: typer.Typer, argv: list[str], prog: str) -> int:
    """Run `app` on `argv` and return its exit status (a usage error prints its message and gives 2)."""
    try:
        app(args=argv, prog_name=prog)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def parse_with(
    options: Callable[..., Flags], resolve: Callable[[Flags], Settings], argv: list[str], prog: str
) -> Settings:
    """The settings `resolve` makes of what `options` (a service's typer options) parses from `argv`;
    SystemExit(2) on bad input."""
    parsed: list[Settings] = []

    @functools.wraps(options)
    def capture(**kwargs: Any) -> None:
        parsed.append(resolve(options(**kwargs)))

    app = new_app(options.__doc__ or "")
    app.command()(capture)
    try:
        app(args=argv, prog_name=prog)
    except SystemExit as exc:
        if not parsed or exc.code not in (0, None):
            raise
    return parsed[0]


def service_command(
    options: Callable[..., Flags], resolve: Callable[[Flags], Settings], serve: Callable[[Settings], int]
) -> Callable[..., None]:
    """A typer command with `options`' parameters and help that serves the settings `resolve` makes.

    The settings model is imported only by `resolve`, so listing the commands and their help is quick."""

    @functools.wraps(options)
    def command(**kwargs: Any) -> None:
        settings = resolve(options(**kwargs))
        from dapo.rpc import ListenError

        try:
            code = serve(settings)
        except ListenError as exc:  # a port taken is the user's to fix: one line, not a traceback
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        raise typer.Exit(code)

    return command


def resolve_or_usage_error(
    model: type[Settings],
    settings_path: str | Path | None,
    flags: Mapping[str, Any],
    fallbacks: Mapping[str, Any] | None = None,
) -> Settings:
    """`dapo.service_settings.resolve_settings`, a ConfigError shown as a usage error (exit status 2)."""
    from dapo.config import ConfigError
    from dapo.service_settings import resolve_settings

    try:
        return resolve_settings(model, settings_path, flags, fallbacks)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None

"""`dapo controller`: the REST API and the loop of the active run."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dapo.commands import Flags, SettingsFile, parse_with, resolve_or_usage_error

if TYPE_CHECKING:
    from dapo_controller.settings import ControllerSettings

# typer reads these annotations at run time: Optional[...] (not `X | None`) is what it understands.
# ruff: noqa: UP045


def _addresses(text: str | None) -> list[str] | None:
    return None if text is None else [a for a in text.split(",") if a]


def options(
    settings: Annotated[Optional[str], SettingsFile] = None,
    redis_url: Annotated[
        Optional[str], typer.Option(help="Redis URL (default: $REDIS_URL, else redis://127.0.0.1:6379/0)")
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address (default 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="HTTP port (default 8000)")] = None,
    rollout_addresses: Annotated[
        Optional[str],
        typer.Option(
            help="comma-separated host:port of rollout gRPC servers (default: $DAPO_ROLLOUT_ADDRESSES)"
        ),
    ] = None,
    reward_address: Annotated[
        Optional[str],
        typer.Option(help="host:port of the reward gRPC server (default: $DAPO_REWARD_ADDRESS)"),
    ] = None,
    api_token: Annotated[
        Optional[str],
        typer.Option(
            help="require this bearer token on mutating endpoints (default: $DAPO_API_TOKEN or the file "
            "$DAPO_API_TOKEN_FILE names; prefer those: a command line is visible to other local users)"
        ),
    ] = None,
    redis_retry_timeout: Annotated[
        Optional[float],
        typer.Option(
            help="seconds to retry an unreachable Redis (back-off) before a command fails (default 60)"
        ),
    ] = None,
    log_level: Annotated[Optional[str], typer.Option(help="default info")] = None,
) -> Flags:
    """The REST API and the loop of the active run: --settings FILE, flags over it, the environment under both."""
    flags = {
        "redis_url": redis_url,
        "host": host,
        "port": port,
        "rollout_addresses": _addresses(rollout_addresses),
        "reward_address": reward_address,
        "api_token": api_token or None,
        "redis_retry_s": redis_retry_timeout,
        "log_level": log_level,
    }
    return {**flags, "settings": settings}


def resolve(flags: Flags) -> ControllerSettings:
    """The settings the parsed options give: the file's, the flags over them, the environment under both."""
    from dapo_controller.settings import ControllerSettings

    settings_file = flags.pop("settings")
    fallbacks = {
        "rollout_addresses": _addresses(os.environ.get("DAPO_ROLLOUT_ADDRESSES")),
        "reward_address": os.environ.get("DAPO_REWARD_ADDRESS"),
    }
    return resolve_or_usage_error(ControllerSettings, settings_file, flags, fallbacks)


def parse_settings(argv: list[str]) -> ControllerSettings:
    """The controller's settings from a command line (`dapo controller ARGS`)."""
    return parse_with(options, resolve, argv, "dapo controller")


def main(argv: list[str] | None = None) -> int:
    return serve_settings(parse_settings(list(sys.argv[1:] if argv is None else argv)))


def serve_settings(settings: ControllerSettings) -> int:
    """Serve the API (uvicorn) until SIGTERM."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import uvicorn

    from dapo import auth
    from dapo_controller.app import create_app

    auth.warn_if_exposed(settings.host, "dapo controller --host", logging.getLogger("dapo_controller"))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        **auth.uvicorn_tls_options(),
    )
    return 0

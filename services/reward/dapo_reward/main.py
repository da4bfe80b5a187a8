"""`dapo reward`: math-answer verification over gRPC and REST."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dapo.commands import Flags, SettingsFile, parse_with, resolve_or_usage_error

if TYPE_CHECKING:
    from dapo_reward.settings import RewardSettings

# typer reads these annotations at run time: Optional[...] (not `X | None`) is what it understands.
# ruff: noqa: UP045


def options(
    settings: Annotated[Optional[str], SettingsFile] = None,
    config: Annotated[
        Optional[str], typer.Option(help="run config YAML whose env.math section gives the defaults")
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address (default 127.0.0.1)")] = None,
    grpc_port: Annotated[Optional[int], typer.Option(help="gRPC port (default 50052)")] = None,
    http_port: Annotated[Optional[int], typer.Option(help="REST port (default 8002)")] = None,
    workers: Annotated[
        Optional[int], typer.Option(help="verifier worker processes (default: env.math.workers)")
    ] = None,
    timeout: Annotated[
        Optional[int], typer.Option(help="whole seconds per item (default: env.math.timeout)")
    ] = None,
    max_response_chars: Annotated[Optional[int], typer.Option(help="longer answers score too_large")] = None,
    cache_size: Annotated[
        Optional[int], typer.Option(help="verdicts kept in the LRU cache (default 100000)")
    ] = None,
) -> Flags:
    """Math-answer verification over gRPC and REST: flags over --settings over the run config's env.math."""
    flags = {
        "host": host,
        "grpc_port": grpc_port,
        "http_port": http_port,
        "workers": workers,
        "timeout": timeout,
        "max_response_chars": max_response_chars,
        "cache_size": cache_size,
    }
    return {**flags, "settings": settings, "config": config}


def resolve(flags: Flags) -> RewardSettings:
    """The settings the parsed options give: flags over the file over the run config's env.math."""
    from dapo.config import ConfigError, load_config
    from dapo_reward.settings import RewardSettings, math_fields

    settings_file, config = flags.pop("settings"), flags.pop("config")
    try:
        fallbacks = math_fields(load_config(config).env.math) if config else {}
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    return resolve_or_usage_error(RewardSettings, settings_file, flags, fallbacks)


def parse_settings(argv: list[str]) -> RewardSettings:
    """The service's settings from a command line (`dapo reward ARGS`)."""
    return parse_with(options, resolve, argv, "dapo reward")


def main(argv: list[str] | None = None) -> int:
    return serve_settings(parse_settings(list(sys.argv[1:] if argv is None else argv)))


def serve_settings(options: RewardSettings) -> int:
    """Serve until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from dapo_reward.service import RewardService

    async def serve() -> None:
        service = RewardService(options)
        await service.start()
        logging.getLogger("dapo_reward").info(
            "reward service ready: gRPC %s:%d, REST %s:%d, %d workers, timeout %d s, math-verify %s",
            options.host,
            service.grpc_port,
            options.host,
            service.http_port,
            options.workers,
            options.timeout,
            options.math_verify.model_dump(),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.stop()

    asyncio.run(serve())
    return 0

"""`dapo trainer`: parse the flags, then import torch and serve runs (see dapo_trainer.service).

Runs under torchrun on any number of ranks and nodes, or as plain Python (one rank):

    dapo trainer --redis-url redis://host:6379/0 [--publisher-port 50053] [--metrics-port 8003]
    torchrun --nproc_per_node=2 -m dapo.cli trainer --redis-url ...
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dapo.commands import Flags, SettingsFile, parse_with, resolve_or_usage_error

if TYPE_CHECKING:
    from dapo_trainer.settings import TrainerSettings

# typer reads these annotations at run time: Optional[...] (not `X | None`) is what it understands.
# ruff: noqa: UP045


def options(
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="dotted key=value overrides of --config", show_default=False)
    ] = None,
    settings: Annotated[Optional[str], SettingsFile] = None,
    redis_url: Annotated[Optional[str], typer.Option(help="Redis URL (default: $REDIS_URL)")] = None,
    run_id: Annotated[
        Optional[str], typer.Option(help="serve this run instead of waiting for the trainer assignment")
    ] = None,
    config: Annotated[
        Optional[str], typer.Option(help="run config YAML/JSON for --run-id (default: the run record's)")
    ] = None,
    publisher_host: Annotated[
        Optional[str], typer.Option(help="weight publisher bind address (default 0.0.0.0)")
    ] = None,
    publisher_port: Annotated[
        Optional[int], typer.Option(help="weight publisher gRPC port (default 50053)")
    ] = None,
    metrics_port: Annotated[Optional[int], typer.Option(help="Prometheus port (rank 0)")] = None,
    weights_dtype: Annotated[
        Optional[str],
        typer.Option(
            help="auto|float32|bfloat16|float16: dtype of published weights and HF exports; auto (the "
            "default) = the model directory's dtype (what the rollout engine loads with dtype=auto)"
        ),
    ] = None,
    exit_when_done: Annotated[
        Optional[bool],
        typer.Option("--exit-when-done", help="exit once the run ends instead of waiting for the next"),
    ] = None,
    poll_interval: Annotated[
        Optional[float], typer.Option(help="seconds between Redis polls (default 1)")
    ] = None,
    heartbeat_ttl: Annotated[
        Optional[float], typer.Option(help="TTL of the heartbeat key (s; default 10)")
    ] = None,
    redis_retry_timeout: Annotated[
        Optional[float],
        typer.Option(help="seconds to retry an unreachable Redis before exiting (default 30)"),
    ] = None,
) -> Flags:
    """Serve training runs (one rank; under torchrun every rank runs this)."""
    flags = {
        "redis_url": redis_url,
        "run_id": run_id,
        "config_path": config,
        "overrides": tuple(overrides) if overrides else None,
        "publisher_host": publisher_host,
        "publisher_port": publisher_port,
        "metrics_port": metrics_port,
        "weights_dtype": weights_dtype,
        "exit_when_done": exit_when_done,
        "poll_interval_s": poll_interval,
        "heartbeat_ttl_s": heartbeat_ttl,
        "redis_retry_s": redis_retry_timeout,
    }
    return {**flags, "settings": settings}


def resolve(flags: Flags) -> TrainerSettings:
    """The settings the parsed options give (the file's, the flags over them)."""
    from dapo_trainer.settings import TrainerSettings

    settings_file = flags.pop("settings")
    return resolve_or_usage_error(TrainerSettings, settings_file, flags)


def parse_settings(argv: list[str]) -> TrainerSettings:
    """The trainer's settings from a command line (`dapo trainer ARGS`)."""
    return parse_with(options, resolve, argv, "dapo trainer")


def main(argv: list[str] | None = None) -> int:
    return serve_settings(parse_settings(list(sys.argv[1:] if argv is None else argv)))


def serve_settings(settings: TrainerSettings) -> int:
    """Serve runs with these settings (imports torch)."""
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s trainer[{rank}] %(levelname)s %(name)s: %(message)s"
    )
    from dapo_trainer.service import serve  # imports torch

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())

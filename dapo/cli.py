"""The `dapo` command line (typer). Thin: it parses the options and imports the heavy parts only when needed.

dapo run CONFIG [key=value ...]       launch everything locally and run one training run
dapo up [CONFIG] [key=value ...]      launch the services only
dapo config CONFIG [key=value ...]    print the resolved, validated config as JSON
dapo make-tiny-model DIR              build the tiny CPU model, its tokenizer and task data
dapo health http URL | grpc HOST:PORT exit 0 when a service is healthy (container healthchecks)
dapo slurm-plan CONFIG --node N=ADDR ... where each service goes in a Slurm job (deploy/slurm/dapo.sub)
dapo controller|rollout|reward|trainer [--settings FILE] [flags]   start one service (`--help` for its flags)

A service's options are declared next to its settings model (dapo_<service>/main.py `options`); those
modules import neither torch nor vLLM, so `dapo --help` and `dapo <command> --help` answer at once.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from dapo_controller import main as controller_main
from dapo_reward import main as reward_main
from dapo_rollout import main as rollout_main
from dapo_trainer import main as trainer_main

from dapo.commands import new_app, run_app, service_command

# typer reads these annotations at run time: Optional[...] (not `X | None`) is what it understands.
# ruff: noqa: UP045

app = new_app("Run, launch or inspect a DAPO training run, or start one of its services.")

Overrides = Annotated[
    Optional[list[str]], typer.Argument(help="dotted key=value overrides", show_default=False)
]


def _version(shown: bool) -> None:
    if shown:
        from dapo import __version__

        print(__version__)
        raise typer.Exit(0)


@app.callback(invoke_without_command=True)
def _root(
    context: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    if context.invoked_subcommand is None:  # `dapo` alone: the overview, as `dapo --help`
        print(context.get_help())
        raise typer.Exit(0)


@app.command("help", hidden=True)
def _help(context: typer.Context) -> None:
    assert context.parent is not None
    print(context.parent.get_help())


@app.command()
def run(config: Annotated[str, typer.Argument(help="YAML run config")], overrides: Overrides = None) -> None:
    """Launch every service locally (or submit to $DAPO_CONTROLLER_URL) and run one training run;
    exit status 0 only if the run succeeded."""
    from dapo.launch.launcher import launch

    raise typer.Exit(launch("run", config, overrides or []))


@app.command()
def up(
    config: Annotated[Optional[str], typer.Argument(help="YAML run config", show_default=False)] = None,
    overrides: Overrides = None,
) -> None:
    """Launch the services only (Ctrl-C stops everything)."""
    from dapo.launch.launcher import launch

    raise typer.Exit(launch("up", config, overrides or []))


@app.command("config")
def config_command(
    config: Annotated[str, typer.Argument(help="YAML run config")], overrides: Overrides = None
) -> None:
    """Print the resolved, validated config as JSON (exit status 2 and the problem if it is invalid)."""
    from dapo.config.cli import show_config

    raise typer.Exit(show_config(config, overrides or []))


class Task(str, Enum):
    addition = "addition"
    column_addition = "column-addition"


@app.command("make-tiny-model")
def make_tiny_model(
    dir: Annotated[str, typer.Argument(help="output directory (created if missing)")],
    seed: Annotated[int, typer.Option(help="seed for weights, data split and warm start")] = 0,
    task: Annotated[
        Task,
        typer.Option(
            help="addition: 2-digit sums, bare answers (examples/tiny-model); column-addition: 2-digit "
            "sums worked column by column, then 'Answer: N' (examples/tiny-reasoning-model)"
        ),
    ] = Task.addition,
    untrained: Annotated[
        bool, typer.Option("--untrained", help="random weights only: no warm start, no task data")
    ] = False,
    steps: Annotated[
        Optional[int], typer.Option(help="warm-start optimizer steps (default: calibrated)")
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            help="torch threads for the warm start (default: the shipped build's, 2 for addition, 1 for "
            "column-addition; the same seed and thread count give the same bytes)"
        ),
    ] = None,
) -> None:
    """Build the tiny Qwen2-architecture model (about 2.6 M parameters), its tokenizer and its task, offline
    and deterministically; without --untrained also the supervised warm start and the task data."""
    from dapo.tiny.cli import TinyModelArgs, make

    raise typer.Exit(make(TinyModelArgs(dir, seed, task.value, untrained, steps, threads)))


class HealthKind(str, Enum):
    http = "http"
    grpc = "grpc"


@app.command()
def health(
    kind: Annotated[HealthKind, typer.Argument(help="http or grpc")],
    target: Annotated[str, typer.Argument(help="URL (http) or host:port (grpc)")],
    service: Annotated[str, typer.Option(help="gRPC service name to check ('' = the server)")] = "",
    timeout: Annotated[float, typer.Option(help="seconds")] = 5.0,
) -> None:
    """Exit 0 when a service is healthy (HTTP: a 2xx answer; gRPC: grpc.health.v1 SERVING), else 1."""
    from dapo.healthcheck import check

    raise typer.Exit(check(kind.value, target, service, timeout))


@app.command("slurm-plan")
def slurm_plan(
    config: Annotated[str, typer.Argument(help="YAML run config")],
    node: Annotated[list[str], typer.Option(help="NAME=ADDRESS, in job order (repeat it)")],
    job_dir: Annotated[Path, typer.Option(help="the job's folder (logs, Redis data)")],
    overrides: Overrides = None,
    port_base: Annotated[int, typer.Option(help="first port of the services")] = 18000,
    python: Annotated[str, typer.Option(help="the Python that runs the services")] = sys.executable,
) -> None:
    """Where each service goes in a Slurm job, and its command (deploy/slurm/dapo.sub runs the plan)."""
    from dapo.launch.slurm import parse_node, print_plan

    try:
        nodes = [parse_node(text) for text in node]
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--node") from None
    raise typer.Exit(print_plan(config, overrides or [], nodes, job_dir, port_base, python))


app.command("controller")(
    service_command(controller_main.options, controller_main.resolve, controller_main.serve_settings)
)
app.command("rollout")(
    service_command(rollout_main.options, rollout_main.resolve, rollout_main.serve_settings)
)
app.command("reward")(service_command(reward_main.options, reward_main.resolve, reward_main.serve_settings))
app.command("trainer")(
    service_command(trainer_main.options, trainer_main.resolve, trainer_main.serve_settings)
)


def main(argv: list[str] | None = None) -> int:
    return run_app(app, list(sys.argv[1:] if argv is None else argv), "dapo")


if __name__ == "__main__":
    sys.exit(main())

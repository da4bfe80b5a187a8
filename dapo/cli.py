"""The `dapo` command line. Thin: it parses arguments and imports the heavy parts only when needed.

dapo run CONFIG [key=value ...]       launch everything locally and run one training run
dapo up [CONFIG] [key=value ...]      launch the services only
dapo config CONFIG [key=value ...]    print the resolved, validated config as JSON
dapo make-tiny-model DIR              build the tiny CPU model, its tokenizer and task data
dapo health http URL | grpc HOST:PORT exit 0 when a service is healthy (container healthchecks)
dapo slurm-plan CONFIG --node N=ADDR ... where each service goes in a Slurm job (deploy/slurm/dapo.sub)
dapo controller|rollout|reward|trainer [args]   start one service (`--help` for its flags)
"""

from __future__ import annotations

import importlib
import sys

SERVICES = {
    "controller": "dapo_controller.main",
    "rollout": "dapo_rollout.main",
    "reward": "dapo_reward.main",
    "trainer": "dapo_trainer.main",
}
COMMANDS = {
    "run": "dapo_controller.launcher",
    "up": "dapo_controller.launcher",
    "config": "dapo.config.cli",
    "make-tiny-model": "dapo.tiny.cli",
    "health": "dapo.healthcheck",
    "slurm-plan": "dapo_controller.slurm",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__.strip())
        return 0
    if argv[0] == "--version":
        from dapo import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    target = SERVICES.get(command) or COMMANDS.get(command)
    if target is None:
        print(
            f"dapo: unknown command '{command}'; expected one of: {', '.join([*COMMANDS, *SERVICES])}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(target)
    if command in ("run", "up"):
        return int(module.main([command, *rest]) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())

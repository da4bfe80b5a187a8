"""`dapo trainer`: parse the flags, then import torch and serve runs (see dapo_trainer.service).

Runs under torchrun on any number of ranks and nodes, or as plain Python (one rank):

    dapo trainer --redis-url redis://host:6379/0 [--publisher-port 50053] [--metrics-port 8003]
    torchrun --nproc_per_node=2 -m dapo.cli trainer --redis-url ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dapo_trainer.settings import TrainerSettings


def parse_args(argv: list[str]) -> TrainerSettings:
    """The trainer's settings: `--settings FILE` (JSON/YAML) with the flags given over it."""
    parser = argparse.ArgumentParser(prog="dapo trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", help="JSON/YAML file of the trainer's settings (flags win over it)")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL)")
    parser.add_argument("--run-id", help="serve this run instead of waiting for the trainer assignment")
    parser.add_argument("--config", help="run config YAML/JSON for --run-id (default: the run record's)")
    parser.add_argument("--publisher-host", help="weight publisher bind address (default 0.0.0.0)")
    parser.add_argument("--publisher-port", type=int, help="weight publisher gRPC port (default 50053)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (rank 0)")
    parser.add_argument(
        "--weights-dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="dtype of published weights and HF exports; auto (the default) = the model directory's dtype "
        "(what the rollout engine loads with dtype=auto)",
    )
    parser.add_argument(
        "--exit-when-done",
        action="store_true",
        default=None,
        help="exit once the run ends instead of waiting for the next",
    )
    parser.add_argument("--poll-interval", type=float, help="seconds between Redis polls (default 1)")
    parser.add_argument("--heartbeat-ttl", type=float, help="TTL of the heartbeat key (s; default 10)")
    parser.add_argument(
        "--redis-retry-timeout",
        type=float,
        help="seconds to retry an unreachable Redis before exiting (default 30)",
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides of --config")
    args = parser.parse_args(argv)
    from dapo.config import ConfigError
    from dapo.service_settings import resolve_settings

    flags = {
        "redis_url": args.redis_url,
        "run_id": args.run_id,
        "config_path": args.config,
        "overrides": tuple(args.overrides) or None,
        "publisher_host": args.publisher_host,
        "publisher_port": args.publisher_port,
        "metrics_port": args.metrics_port,
        "weights_dtype": args.weights_dtype,
        "exit_when_done": args.exit_when_done,
        "poll_interval_s": args.poll_interval,
        "heartbeat_ttl_s": args.heartbeat_ttl,
        "redis_retry_s": args.redis_retry_timeout,
    }
    try:
        return resolve_settings(TrainerSettings, args.settings, flags)
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(list(sys.argv[1:] if argv is None else argv))
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s trainer[{rank}] %(levelname)s %(name)s: %(message)s"
    )
    from dapo_trainer.service import serve  # imports torch

    return serve(options)


if __name__ == "__main__":
    sys.exit(main())

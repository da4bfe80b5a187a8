"""`dapo reward`: math-answer verification over gRPC and REST."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from dapo_reward.settings import RewardSettings


def parse_options(argv: list[str]) -> RewardSettings:
    """The service's settings: flags over `--settings FILE` over the run config's env.math (`--config`)."""
    parser = argparse.ArgumentParser(prog="dapo reward", description=__doc__)
    parser.add_argument(
        "--settings", help="JSON/YAML file of the reward service's settings (flags win over it)"
    )
    parser.add_argument("--config", help="run config YAML whose env.math section gives the defaults")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 50052)")
    parser.add_argument("--http-port", type=int, help="REST port (default 8002)")
    parser.add_argument("--workers", type=int, help="verifier worker processes (default: env.math.workers)")
    parser.add_argument("--timeout", type=int, help="whole seconds per item (default: env.math.timeout)")
    parser.add_argument("--max-response-chars", type=int, help="longer answers score too_large")
    parser.add_argument("--cache-size", type=int, help="verdicts kept in the LRU cache (default 100000)")
    args = parser.parse_args(argv)

    from dapo.config import ConfigError, load_config
    from dapo.service_settings import resolve_settings
    from dapo_reward.settings import math_fields

    flags = {
        "host": args.host,
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "workers": args.workers,
        "timeout": args.timeout,
        "max_response_chars": args.max_response_chars,
        "cache_size": args.cache_size,
    }
    try:
        fallbacks = math_fields(load_config(args.config).env.math) if args.config else {}
        return resolve_settings(RewardSettings, args.settings, flags, fallbacks)
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: list[str]) -> int:
    options = parse_options(argv)
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

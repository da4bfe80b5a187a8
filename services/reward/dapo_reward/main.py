"""`dapo reward`: math-answer verification over gRPC and REST."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dapo_reward.service import RewardOptions


def parse_options(argv: list[str]) -> RewardOptions:
    """The service's options: flags over the run config's env.math (grading options included)."""
    parser = argparse.ArgumentParser(prog="dapo reward", description=__doc__)
    parser.add_argument("--config", help="run config YAML whose env.math section gives the defaults")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=50052)
    parser.add_argument("--http-port", type=int, default=8002)
    parser.add_argument("--workers", type=int, help="verifier worker processes (default: env.math.workers)")
    parser.add_argument("--timeout", type=int, help="whole seconds per item (default: env.math.timeout)")
    parser.add_argument("--max-response-chars", type=int, help="longer answers score too_large")
    parser.add_argument("--cache-size", type=int, default=100_000, help="verdicts kept in the LRU cache")
    args = parser.parse_args(argv)

    from dapo.config import ConfigError, MathEnvConfig, load_config

    try:
        math_cfg = load_config(args.config).env.math if args.config else MathEnvConfig()
        math_cfg = MathEnvConfig.model_validate(
            {
                **math_cfg.model_dump(exclude_unset=True),
                **{
                    k: v
                    for k, v in {
                        "workers": args.workers,
                        "timeout": args.timeout,
                        "max_response_chars": args.max_response_chars,
                    }.items()
                    if v is not None
                },
            }
        )
    except (ConfigError, ValueError) as exc:
        parser.error(str(exc))
    from dapo_reward.service import RewardOptions

    return RewardOptions(
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        workers=math_cfg.workers,
        timeout=math_cfg.timeout,
        max_response_chars=math_cfg.max_response_chars,
        cache_size=args.cache_size,
        math_verify=math_cfg.math_verify,
    )


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

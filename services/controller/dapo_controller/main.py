"""`dapo controller`: the REST API and the loop of the active run."""

from __future__ import annotations

import argparse
import logging
import os


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dapo controller", description=__doc__)
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--rollout-addresses",
        default=os.environ.get("DAPO_ROLLOUT_ADDRESSES", ""),
        help="comma-separated host:port of rollout gRPC servers",
    )
    parser.add_argument(
        "--reward-address",
        default=os.environ.get("DAPO_REWARD_ADDRESS"),
        help="host:port of the reward gRPC server",
    )
    parser.add_argument(
        "--api-token",
        default=None,
        help="require this bearer token on mutating endpoints (default: $DAPO_API_TOKEN or the file "
        "$DAPO_API_TOKEN_FILE names; prefer those: a command line is visible to other local users)",
    )
    parser.add_argument(
        "--redis-retry-timeout",
        type=float,
        default=60.0,
        help="seconds to retry an unreachable Redis (back-off) before a command fails",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import uvicorn

    from dapo import auth
    from dapo_controller.app import create_app
    from dapo_controller.settings import ControllerSettings

    auth.warn_if_exposed(args.host, "dapo controller --host", logging.getLogger("dapo_controller"))

    settings = ControllerSettings(
        redis_url=args.redis_url,
        host=args.host,
        port=args.port,
        api_token=args.api_token or auth.api_token(),
        rollout_addresses=[a for a in args.rollout_addresses.split(",") if a],
        reward_address=args.reward_address,
        redis_retry_s=args.redis_retry_timeout,
    )
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
        **auth.uvicorn_tls_options(),
    )
    return 0

"""`dapo controller`: the REST API and the loop of the active run."""

from __future__ import annotations

import argparse
import logging
import os

from dapo_controller.settings import ControllerSettings


def parse_settings(argv: list[str]) -> ControllerSettings:
    """The controller's settings: `--settings FILE` (JSON/YAML), flags over it, the environment under both."""
    parser = argparse.ArgumentParser(prog="dapo controller", description=__doc__)
    parser.add_argument("--settings", help="JSON/YAML file of the controller's settings (flags win over it)")
    parser.add_argument("--redis-url", help="Redis URL (default: $REDIS_URL, else redis://127.0.0.1:6379/0)")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8000)")
    parser.add_argument(
        "--rollout-addresses",
        help="comma-separated host:port of rollout gRPC servers (default: $DAPO_ROLLOUT_ADDRESSES)",
    )
    parser.add_argument(
        "--reward-address", help="host:port of the reward gRPC server (default: $DAPO_REWARD_ADDRESS)"
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
        help="seconds to retry an unreachable Redis (back-off) before a command fails (default 60)",
    )
    parser.add_argument("--log-level", help="default info")
    args = parser.parse_args(argv)
    return settings_from_flags(parser, args)


def settings_from_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> ControllerSettings:
    from dapo.config import ConfigError
    from dapo.service_settings import resolve_settings

    def addresses(text: str | None) -> list[str] | None:
        return None if text is None else [a for a in text.split(",") if a]

    flags = {
        "redis_url": args.redis_url,
        "host": args.host,
        "port": args.port,
        "rollout_addresses": addresses(args.rollout_addresses),
        "reward_address": args.reward_address,
        "api_token": args.api_token or None,
        "redis_retry_s": args.redis_retry_timeout,
        "log_level": args.log_level,
    }
    fallbacks = {
        "rollout_addresses": addresses(os.environ.get("DAPO_ROLLOUT_ADDRESSES")),
        "reward_address": os.environ.get("DAPO_REWARD_ADDRESS"),
    }
    try:
        return resolve_settings(ControllerSettings, args.settings, flags, fallbacks)
    except ConfigError as exc:
        parser.error(str(exc))


def main(argv: list[str]) -> int:
    settings = parse_settings(argv)
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

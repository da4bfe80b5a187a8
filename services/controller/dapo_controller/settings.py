"""Settings of the controller process (`dapo controller`, flags or `--settings FILE`)."""

from __future__ import annotations

import os
from typing import ClassVar

from pydantic import Field

from dapo import auth
from dapo.config import ServicesConfig
from dapo.service_settings import ServiceSettings, config_field

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ControllerSettings(ServiceSettings):
    secret_fields: ClassVar[frozenset[str]] = frozenset({"redis_url", "api_token"})

    redis_url: str = Field(default_factory=lambda: os.environ.get("REDIS_URL", DEFAULT_REDIS_URL), repr=False)
    """Redis holding runs, batches, metrics and events (default: $REDIS_URL)."""
    api_token: str | None = Field(default_factory=auth.api_token, repr=False)
    """Bearer token required on mutating endpoints (none: open); $DAPO_API_TOKEN or $DAPO_API_TOKEN_FILE."""
    host: str = "127.0.0.1"
    """Bind address."""
    port: int = Field(8000, ge=0, le=65535)
    """HTTP port."""
    rollout_addresses: list[str] = Field(default_factory=list)
    """Rollout gRPC servers (host:port, or dns:///name:port); empty: the run config's."""
    reward_address: str | None = None
    """Reward gRPC server; none: the run config's."""
    run_loop: bool = True
    """Drive runs (false: API only)."""
    redis_retry_s: float = config_field(ServicesConfig, "redis_timeout_s")
    """Each Redis command is retried with back-off for about this long while Redis is unreachable
    (a restart); then the error reaches the caller."""
    log_level: str = "info"
    """Log level of the controller and its HTTP server."""

"""Settings of the controller process."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from dapo import auth


class ControllerSettings(BaseModel):
    redis_url: str = Field(
        default_factory=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), repr=False
    )
    """Redis holding runs, batches, metrics and events."""
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
    redis_retry_s: float = Field(60.0, gt=0)
    """Each Redis command is retried with back-off for about this long while Redis is unreachable
    (a restart); then the error reaches the caller."""

"""Settings of the trainer process (`dapo trainer`, flags or `--settings FILE`); importing it imports no torch.

The run itself comes from Redis (the trainer assignment) or from `run_id` with `config_path`.
"""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from dapo.dtypes import ServedDType
from dapo.service_settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    secret_fields: ClassVar[frozenset[str]] = frozenset({"redis_url"})

    redis_url: str = Field(default_factory=lambda: os.environ.get("REDIS_URL", ""), repr=False)
    """Redis URL (default: $REDIS_URL; required)."""
    run_id: str | None = None
    """Serve this run instead of waiting for the trainer assignment."""
    config_path: str | None = None
    """Run config YAML/JSON for `run_id` (default: the run record's)."""
    overrides: tuple[str, ...] = ()
    """Dotted key=value overrides of `config_path`."""
    publisher_host: str = "0.0.0.0"
    """Weight publisher bind address."""
    publisher_port: int = Field(50053, ge=0, le=65535)
    """Weight publisher gRPC port."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Prometheus port (rank 0; none: off)."""
    weights_dtype: Literal["auto"] | ServedDType = "auto"
    """dtype of published weights and HF exports; auto = the model directory's dtype (what the rollout
    engine loads with dtype=auto)."""
    exit_when_done: bool = False
    """Exit once the run ends instead of waiting for the next."""
    poll_interval_s: float = Field(1.0, gt=0)
    """Seconds between Redis polls."""
    heartbeat_ttl_s: float = Field(10.0, gt=0)
    """TTL of the heartbeat key (s)."""
    redis_retry_s: float = Field(30.0, gt=0)
    """Seconds to retry an unreachable Redis before exiting."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainerSettings:
        if not self.redis_url:
            raise ValueError("redis_url (--redis-url) is required (or set $REDIS_URL)")
        if self.config_path and not self.run_id:
            raise ValueError("config_path (--config) needs run_id (--run-id)")
        if self.overrides and not self.config_path:
            raise ValueError("overrides (key=value) need config_path (--config)")
        return self

"""The trainer process's settings (what `dapo trainer` parses; importing it imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainerOptions:
    """What the flags say; the run itself comes from Redis (the assignment) or --run-id/--config."""

    redis_url: str
    run_id: str | None
    config_path: str | None
    overrides: tuple[str, ...]
    publisher_host: str
    publisher_port: int
    metrics_port: int | None
    weights_dtype: str
    exit_when_done: bool
    poll_interval_s: float
    heartbeat_ttl_s: float
    redis_retry_s: float

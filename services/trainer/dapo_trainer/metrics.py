"""Metrics and events out (rank 0): per-step records and run events on the run's Redis streams, and
Prometheus metrics on `--metrics-port`.

Metric records go to `keys.metrics_stream(run_id)` as field `data` = JSON {"step", "source": "trainer",
"version", "train/...", "time/..."}; events to `keys.events_stream(run_id)` as field `data` =
JSON {"kind", "message", "time", ...}. Both streams are capped (XADD MAXLEN) at the run's
`services.redis_metrics_maxlen` / `services.redis_events_maxlen` (dapo.stream_limits).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from dapo import keys
from dapo.records import event_entry, stream_entry
from dapo.stream_limits import StreamLimits
from dapo_trainer.redis_io import RetryingRedis

log = logging.getLogger(__name__)

POLICY_VERSION = Gauge("dapo_trainer_policy_version", "Newest policy version committed and published")
BATCHES = Counter("dapo_trainer_batches_total", "TrainBatches applied")
REJECTED = Counter("dapo_trainer_batches_rejected_total", "TrainBatches rejected to the dead-letter stream")
SKIPPED = Counter("dapo_trainer_batches_skipped_total", "Redelivered TrainBatches already in the ledger")
OPTIMIZER_STEPS = Counter("dapo_trainer_optimizer_steps_total", "Optimizer steps taken")
LOSS = Gauge("dapo_trainer_loss", "Loss of the last TrainBatch")
TOKENS_PER_S = Gauge("dapo_trainer_tokens_per_second", "Training throughput of the last TrainBatch")
PART_SECONDS = Histogram(
    "dapo_trainer_step_part_seconds",
    "Seconds per TrainBatch by part",
    ["part"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
PUSH_FAILURES = Counter("dapo_trainer_push_failures_total", "Weight pushes to rollout servers that failed")

_server_started = False


def start_metrics_server(port: int | None, host: str = "0.0.0.0") -> None:
    global _server_started
    if port is not None and not _server_started:
        start_http_server(port, addr=host)
        _server_started = True
        log.info("Prometheus metrics on port %d", port)


class RunReporter:
    """Writes one run's metric records and events."""

    def __init__(self, redis: RetryingRedis, run_id: str, limits: StreamLimits | None = None) -> None:
        self.redis = redis
        self.run_id = run_id
        self.limits = limits or StreamLimits()

    def event(self, kind: str, message: str, **extra: Any) -> None:
        self.redis.xadd(
            keys.events_stream(self.run_id),
            event_entry(kind, message, source="trainer", **extra),
            maxlen=self.limits.events_maxlen,
            approximate=False,
        )

    def step(self, step: int, version: int, metrics: dict[str, float]) -> None:
        record: dict[str, Any] = {"step": step, "source": "trainer", "version": version}
        record.update({k: (v if math.isfinite(v) else None) for k, v in metrics.items()})
        self.redis.xadd(
            keys.metrics_stream(self.run_id),
            stream_entry(record),
            maxlen=self.limits.metrics_maxlen,
            approximate=False,
        )
        POLICY_VERSION.set(version)
        BATCHES.inc()
        OPTIMIZER_STEPS.inc(metrics.get("train/num_optimizer_steps", 0))
        LOSS.set(metrics.get("train/loss", math.nan))
        TOKENS_PER_S.set(metrics.get("train/tokens_per_s", 0.0))
        for key, value in metrics.items():
            if key.startswith("time/"):
                PART_SECONDS.labels(part=key.removeprefix("time/")).observe(value)

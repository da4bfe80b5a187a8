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
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from dapo import keys
from dapo.records import event_entry, stream_entry
from dapo.stream_limits import StreamLimits
from dapo_trainer.redis_io import RetryingRedis

log = logging.getLogger(__name__)


class TrainerMetrics:
    """The trainer's Prometheus metrics, on a registry of their own (every service declares its metrics
    this way: one class, one registry). One trainer process serves one set: `METRICS`, served by rank 0."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.policy_version = Gauge(
            "dapo_trainer_policy_version",
            "Newest policy version committed and published",
            registry=self.registry,
        )
        self.batches = Counter("dapo_trainer_batches_total", "TrainBatches applied", registry=self.registry)
        self.rejected = Counter(
            "dapo_trainer_batches_rejected_total",
            "TrainBatches rejected to the dead-letter stream",
            registry=self.registry,
        )
        self.skipped = Counter(
            "dapo_trainer_batches_skipped_total",
            "Redelivered TrainBatches already in the ledger",
            registry=self.registry,
        )
        self.optimizer_steps = Counter(
            "dapo_trainer_optimizer_steps_total", "Optimizer steps taken", registry=self.registry
        )
        self.loss = Gauge("dapo_trainer_loss", "Loss of the last TrainBatch", registry=self.registry)
        self.tokens_per_s = Gauge(
            "dapo_trainer_tokens_per_second",
            "Training throughput of the last TrainBatch",
            registry=self.registry,
        )
        self.part_seconds = Histogram(
            "dapo_trainer_step_part_seconds",
            "Seconds per TrainBatch by part",
            ["part"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=self.registry,
        )
        self.push_failures = Counter(
            "dapo_trainer_push_failures_total",
            "Weight pushes to rollout servers that failed",
            registry=self.registry,
        )
        self._server: WSGIServer | None = None

    def observe_step(self, version: int, metrics: dict[str, float]) -> None:
        """One applied TrainBatch's record (the keys of `RunReporter.step`)."""
        self.policy_version.set(version)
        self.batches.inc()
        self.optimizer_steps.inc(metrics.get("train/num_optimizer_steps", 0))
        self.loss.set(metrics.get("train/loss", math.nan))
        self.tokens_per_s.set(metrics.get("train/tokens_per_s", 0.0))
        for key, value in metrics.items():
            if key.startswith("time/"):
                self.part_seconds.labels(part=key.removeprefix("time/")).observe(value)

    def serve(self, port: int | None, host: str = "0.0.0.0") -> None:
        """Expose the metrics on http://host:port/metrics (once; None: not at all) until `close`."""
        if port is not None and self._server is None:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
            log.info("Prometheus metrics on port %d", port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


METRICS = TrainerMetrics()


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
        METRICS.observe_step(version, metrics)

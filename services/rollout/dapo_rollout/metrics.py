"""Prometheus metrics of the rollout server, and the recent token rate `Status` reports.

Each server owns its own `CollectorRegistry` (several servers can live in one test process); `serve`
exposes it on `/metrics` over HTTP with prometheus-client's own server.
"""

from __future__ import annotations

import collections
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
UPDATE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class RolloutMetrics:
    def __init__(self, rate_window_s: float = 30.0) -> None:
        self.registry = CollectorRegistry()
        self.tokens_generated = Counter(
            "dapo_rollout_generated_tokens", "Tokens sampled (all samples)", registry=self.registry
        )
        self.prompt_tokens = Counter(
            "dapo_rollout_prompt_tokens", "Prompt tokens processed", registry=self.registry
        )
        self.requests = Counter(
            "dapo_rollout_requests", "Generate calls by outcome", ["outcome"], registry=self.registry
        )
        self.request_latency = Histogram(
            "dapo_rollout_request_latency_seconds",
            "Duration of Generate calls",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests_in_flight = Gauge(
            "dapo_rollout_requests_in_flight", "Generate calls being served", registry=self.registry
        )
        self.update_duration = Histogram(
            "dapo_rollout_weight_update_seconds",
            "Weight update, from the manifest to the new version served",
            buckets=UPDATE_BUCKETS,
            registry=self.registry,
        )
        self.update_bytes = Counter(
            "dapo_rollout_weight_update_bytes", "Bytes of applied weight updates", registry=self.registry
        )
        self.updates_rejected = Counter(
            "dapo_rollout_weight_updates_rejected", "Weight updates refused", registry=self.registry
        )
        self.policy_version = Gauge(
            "dapo_rollout_policy_version", "Policy version served (-1: none)", registry=self.registry
        )
        self.policy_version.set(-1)
        self.rate_window_s = rate_window_s
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def observe_generate(self, num_prompt_tokens: int, num_tokens: int, duration_s: float) -> None:
        self.tokens_generated.inc(num_tokens)
        self.prompt_tokens.inc(num_prompt_tokens)
        self.request_latency.observe(duration_s)
        self.requests.labels("ok").inc()
        with self._lock:
            self._recent.append((time.monotonic(), num_tokens))

    def observe_update(self, num_bytes: int, duration_s: float, version: int) -> None:
        self.update_bytes.inc(num_bytes)
        self.update_duration.observe(duration_s)
        self.policy_version.set(version)

    def tokens_per_second(self) -> float:
        """Tokens sampled per second over the last `rate_window_s` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.rate_window_s:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / self.rate_window_s

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Expose `/metrics` on `host:port` (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)

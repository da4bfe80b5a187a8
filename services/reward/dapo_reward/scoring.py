"""Scoring a batch: size limits, the result cache, the worker pool, and the score of each verdict.

Shared by the gRPC and REST front ends, so both give the same answer to the same request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dapo_reward.pool import Verdict, WorkerPool
from dapo_reward.verifiers import VERIFIERS

MAX_ITEMS = 100_000


class BadRequest(ValueError):
    """A request the service cannot score at all (unknown verifier, too many items); names the field."""


@dataclass
class Item:
    id: str
    response: str
    ground_truth: str


@dataclass
class Result:
    id: str
    score: float
    correct: bool
    extracted: str
    error: str


class ResultCache:
    """Bounded LRU of verdicts keyed by (verifier, response, ground truth); timeouts are not cached."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, str, str], Verdict] = OrderedDict()

    def get(self, key: tuple[str, str, str]) -> Verdict | None:
        verdict = self._data.get(key)
        if verdict is not None:
            self._data.move_to_end(key)
        return verdict

    def put(self, key: tuple[str, str, str], verdict: Verdict) -> None:
        if self.capacity <= 0 or verdict[2] in ("timeout", "crash"):
            return
        self._data[key] = verdict
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter("dapo_reward_items_total", "Items scored", ["verifier"], registry=registry)
        self.errors = Counter("dapo_reward_errors_total", "Items with an error", ["error"], registry=registry)
        self.cache_hits = Counter(
            "dapo_reward_cache_hits_total", "Verdicts served from the cache", registry=registry
        )
        self.latency = Histogram(
            "dapo_reward_item_seconds",
            "Time to a verdict per item",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30),
        )
        self.batch_latency = Histogram(
            "dapo_reward_batch_seconds", "Time to score a batch", registry=registry
        )
        self.workers = Gauge("dapo_reward_pool_workers", "Worker processes alive", registry=registry)
        self.replaced = Gauge(
            "dapo_reward_pool_replaced", "Workers killed and replaced so far", registry=registry
        )


class Scorer:
    def __init__(
        self,
        pool: WorkerPool,
        max_response_chars: int,
        cache_size: int = 100_000,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.pool = pool
        self.max_response_chars = max_response_chars
        self.cache = ResultCache(cache_size)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)

    async def score(self, verifier: str, items: list[Item], binary: bool = False) -> list[Result]:
        if verifier not in VERIFIERS:
            raise BadRequest(f"verifier: expected one of {', '.join(VERIFIERS)}, got {verifier!r}")
        if len(items) > MAX_ITEMS:
            raise BadRequest(f"items: at most {MAX_ITEMS} per request, got {len(items)}")
        started = time.perf_counter()
        verdicts = await asyncio.gather(*(self._one(verifier, item) for item in items))
        self.metrics.batch_latency.observe(time.perf_counter() - started)
        self.metrics.workers.set(self.pool.num_alive())
        self.metrics.replaced.set(self.pool.stats.replaced)
        wrong = 0.0 if binary else -1.0
        return [
            Result(item.id, 1.0 if correct else wrong, correct, extracted, error)
            for item, (correct, extracted, error) in zip(items, verdicts, strict=True)
        ]

    async def _one(self, verifier: str, item: Item) -> Verdict:
        started = time.perf_counter()
        self.metrics.items.labels(verifier).inc()
        if len(item.response) > self.max_response_chars or len(item.ground_truth) > self.max_response_chars:
            verdict: Verdict = (False, "", "too_large")
        else:
            key = (verifier, item.response, item.ground_truth)
            cached = self.cache.get(key)
            if cached is not None:
                self.metrics.cache_hits.inc()
                verdict = cached
            else:
                verdict = await self.pool.verify(verifier, item.response, item.ground_truth)
                self.cache.put(key, verdict)
        if verdict[2]:
            self.metrics.errors.labels(verdict[2]).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return verdict

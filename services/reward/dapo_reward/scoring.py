"""Scoring a batch: size limits, grading options, the result cache, the worker pool, and the score of
each verdict.

Shared by the gRPC and REST front ends, so both give the same answer to the same request. A request's
math-verify grading options override the service's defaults (`env.math.math_verify`) one by one.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pydantic import ValidationError

from dapo.config.schema import MathVerifyConfig
from dapo.records import VERIFIERS
from dapo_reward.pool import Options, Verdict, WorkerPool

MAX_ITEMS = 100_000
ERRORS = ("timeout", "too_large", "unparsable_gold", "crash")


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


CacheKey = tuple[str, Options, str, str]  # (verifier, grading options, response, ground truth)


class ResultCache:
    """Bounded LRU of verdicts keyed by (verifier, options, response, ground truth); timeouts are not
    cached."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[CacheKey, Verdict] = OrderedDict()

    def get(self, key: CacheKey) -> Verdict | None:
        verdict = self._data.get(key)
        if verdict is not None:
            self._data.move_to_end(key)
        return verdict

    def put(self, key: CacheKey, verdict: Verdict) -> None:
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
        self.errors = Counter(
            "dapo_reward_errors_total",
            "Items with an error (unparsable_gold: the ground truth did not parse)",
            ["error"],
            registry=registry,
        )
        for error in ERRORS:  # every series exists from the start, at 0
            self.errors.labels(error)
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
        math_verify: MathVerifyConfig | None = None,
    ) -> None:
        self.pool = pool
        self.max_response_chars = max_response_chars
        self.cache = ResultCache(cache_size)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.math_verify = math_verify or MathVerifyConfig()

    def grading_options(self, verifier: str, overrides: Mapping[str, Any] | None) -> Options:
        """The service's math-verify defaults with the request's overrides, validated; () for DAPO's rule."""
        if verifier != "math_verify":
            if overrides:
                raise BadRequest(
                    f"math_verify: grading options apply only to verifier math_verify, got {verifier!r}"
                )
            return ()
        try:
            merged = MathVerifyConfig.model_validate({**self.math_verify.model_dump(), **(overrides or {})})
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise BadRequest(f"math_verify.{field}: {first['msg']}, got {first['input']!r}") from None
        return tuple(sorted(merged.model_dump().items()))

    async def score(
        self,
        verifier: str,
        items: list[Item],
        binary: bool = False,
        math_verify: Mapping[str, Any] | None = None,
    ) -> list[Result]:
        """`math_verify`: the grading options the request sets (the others keep the service's defaults)."""
        if verifier not in VERIFIERS:
            raise BadRequest(f"verifier: expected one of {', '.join(VERIFIERS)}, got {verifier!r}")
        if len(items) > MAX_ITEMS:
            raise BadRequest(f"items: at most {MAX_ITEMS} per request, got {len(items)}")
        options = self.grading_options(verifier, math_verify)
        started = time.perf_counter()
        verdicts = await asyncio.gather(*(self._one(verifier, options, item) for item in items))
        self.metrics.batch_latency.observe(time.perf_counter() - started)
        self.metrics.workers.set(self.pool.num_alive())
        self.metrics.replaced.set(self.pool.stats.replaced)
        wrong = 0.0 if binary else -1.0
        return [
            Result(item.id, 1.0 if correct else wrong, correct, extracted, error)
            for item, (correct, extracted, error) in zip(items, verdicts, strict=True)
        ]

    async def _one(self, verifier: str, options: Options, item: Item) -> Verdict:
        started = time.perf_counter()
        self.metrics.items.labels(verifier).inc()
        if len(item.response) > self.max_response_chars or len(item.ground_truth) > self.max_response_chars:
            verdict: Verdict = (False, "", "too_large")
        else:
            key = (verifier, options, item.response, item.ground_truth)
            cached = self.cache.get(key)
            if cached is not None:
                self.metrics.cache_hits.inc()
                verdict = cached
            else:
                verdict = await self.pool.verify(verifier, item.response, item.ground_truth, options)
                self.cache.put(key, verdict)
        if verdict[2]:
            self.metrics.errors.labels(verdict[2]).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return verdict

"""The controller's FastAPI application: the REST API, health, Prometheus metrics, the dashboard.

`create_app(settings)` builds it; its lifespan connects Redis (retrying through a restart), puts the RunStore on `app.state` and,
unless `settings.run_loop` is false, starts the RunManager that drives the active run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dapo import __version__, auth, keys
from dapo.records import RUN_STATUSES
from dapo_controller import api, dashboard
from dapo_controller.settings import ControllerSettings
from dapo_controller.store import RunStore


class ControllerMetrics:
    """The controller's Prometheus metrics, on a registry of their own (every service declares its
    metrics this way: one class, one registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "dapo_controller_requests_total",
            "HTTP requests",
            ["method", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dapo_controller_request_seconds", "HTTP request latency", ["route"], registry=self.registry
        )
        self.runs = Gauge("dapo_controller_runs", "Runs by status", ["status"], registry=self.registry)
        self.step = Gauge("dapo_run_step", "Step of the active run", registry=self.registry)
        self.version = Gauge(
            "dapo_run_policy_version", "Policy version of the active run", registry=self.registry
        )
        self.latest = Gauge(
            "dapo_run_metric",
            "Latest value of a loop metric of the active run",
            ["key"],
            registry=self.registry,
        )
        self.queue = Gauge(
            "dapo_run_queue_depth",
            "Batches queued and not yet applied by the trainer",
            registry=self.registry,
        )


EXPORTED = (
    "train/reward",
    "train/accuracy",
    "val/accuracy",
    "train/staleness",
    "train/groups_kept_frac",
    "gen/tokens_per_s",
    "train/tokens_per_s",
    "train/entropy",
    "train/clip_high_frac",
    "train/clip_low_frac",
    "time/generate",
    "time/reward",
    "time/publish",
    "time/gather",
)


READY_TIMEOUT_S = 2.0


def redis_client(url: str, retry_s: float) -> aioredis.Redis:
    """A client whose commands survive a Redis restart: connection errors and timeouts are retried
    with exponential back-off (capped at 1 s) for about `retry_s` seconds (redis-py's own Retry)."""
    backoff = ExponentialBackoff(cap=1.0, base=0.05)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=5,
        retry=Retry(backoff, retries=math.ceil(retry_s) + 5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        **auth.redis_options(url),
    )


health_router = APIRouter(tags=["health"])


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"description": "Redis unreachable"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when Redis answers (within READY_TIMEOUT_S: the client's retries are not waited for)."""
    try:
        await asyncio.wait_for(request.app.state.store.redis.ping(), READY_TIMEOUT_S)
    except (aioredis.ConnectionError, aioredis.TimeoutError, OSError, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {READY_TIMEOUT_S} s"
        return JSONResponse(status_code=503, content={"status": "unavailable", "reason": reason})
    return JSONResponse({"status": "ready"})


def create_app(settings: ControllerSettings | None = None) -> FastAPI:
    settings = settings or ControllerSettings()
    app = FastAPI(title="dapo controller", version=__version__, lifespan=_lifespan(settings))
    app.state.settings = settings
    app.include_router(api.router)
    app.include_router(dashboard.router)
    app.include_router(health_router)
    _add_metrics(app)
    return app


def _lifespan(settings: ControllerSettings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Connect Redis and put the RunStore on `app.state`; start the RunManager unless `settings.run_loop`
    is false. Teardown stops it and closes the client."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client(settings.redis_url, settings.redis_retry_s)
        app.state.store = RunStore(client)
        manager = None
        if settings.run_loop:
            from dapo_controller.manager import RunManager

            manager = RunManager(store=app.state.store, settings=settings)
            await manager.start()
        try:
            yield
        finally:
            if manager is not None:
                await manager.stop()
            await client.aclose()

    return lifespan


def _add_metrics(app: FastAPI) -> None:
    """Count and time every request, and serve the Prometheus figures at /metrics."""
    metrics = ControllerMetrics()

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(request.method, route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def prometheus(request: Request) -> Response:
        runs = await request.app.state.store.list_runs()
        for status in RUN_STATUSES:
            metrics.runs.labels(status).set(sum(r.status == status for r in runs))
        active = [r for r in runs if r.status == "running"]
        if active:
            run = active[0]
            metrics.step.set(run.step)
            metrics.version.set(run.policy_version)
            for key in EXPORTED:
                if isinstance(run.latest_metrics.get(key), int | float):
                    metrics.latest.labels(key).set(run.latest_metrics[key])
            metrics.queue.set(await queue_depth(request.app.state.store.redis, run.id))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def queue_depth(redis: aioredis.Redis, run_id: str) -> int:
    """Batches of the run the trainer has not acknowledged: delivered and pending, or not yet read.
    (Acknowledged ones leave the stream, so its length alone would also count those kept for inspection.)"""
    stream = keys.batch_stream(run_id)
    if not await redis.exists(stream):
        return 0
    for group in await redis.xinfo_groups(stream):
        name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
        if name == keys.TRAINER_GROUP and group.get("lag") is not None:
            return int(group["pending"]) + int(group["lag"])
    return int(await redis.xlen(stream))  # no trainer yet (or Redis < 7.0, which reports no lag)


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn dapo_controller.app:create_app_from_env --factory` (settings from env)."""
    return create_app(ControllerSettings())

"""Assemble and run one rollout server: engine, weight updater, gRPC + health, metrics, publisher follower.

`serve(options)` runs until SIGTERM/SIGINT (then stops gRPC gracefully and shuts the engine down) or until
the engine fails (then it exits with an error, so that a supervisor restarts the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from grpc_health.v1.health import aio as health_aio

from dapo_rollout.engine import EngineOptions, RolloutEngine
from dapo_rollout.follower import PublisherFollower
from dapo_rollout.grpc_server import RolloutServicer, build_server
from dapo_rollout.metrics import RolloutMetrics
from dapo_rollout.weight_update import WeightUpdater, expected_specs_from_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    engine: EngineOptions
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int | None = 8001
    weights_address: str | None = None
    poll_s: float = 3.0
    grace_s: float = 10.0
    staging_root: str | None = None


async def serve(options: ServerOptions) -> int:
    metrics = RolloutMetrics()
    if options.metrics_port is not None:
        metrics.serve(options.metrics_port, options.host)
    engine_options = options.engine
    expected = expected_specs_from_dir(engine_options.model, engine_options.dtype)
    engine = RolloutEngine(engine_options)
    health = health_aio.HealthServicer()
    updater = WeightUpdater(engine, expected, options.staging_root, metrics, options.weights_address)
    servicer = RolloutServicer(engine, updater, metrics, health)
    await servicer.refresh_health()  # NOT_SERVING while the engine starts
    server, port = build_server(servicer, f"{options.host}:{options.port}")
    await server.start()
    log.info("rollout gRPC on %s:%d (NOT_SERVING until the engine is up)", options.host, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    follower_task: asyncio.Task | None = None
    exit_code = 0
    try:
        await updater.prepare()
        starting = asyncio.ensure_future(engine.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            return 0
        starting.result()
        metrics.policy_version.set(engine.version)
        await servicer.refresh_health()
        if options.weights_address:
            follower = PublisherFollower(
                options.weights_address, updater, poll_s=options.poll_s, on_update=servicer.refresh_health
            )
            follower_task = asyncio.ensure_future(follower.run())
        log.info("rollout server ready: version %d on %s", engine.version, engine.device)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            await servicer.refresh_health()
            if engine.is_errored:
                log.error("the vLLM engine failed; stopping the rollout server")
                exit_code = 1
                break
    finally:
        if follower_task is not None:
            follower_task.cancel()
            await asyncio.gather(follower_task, return_exceptions=True)
        await server.stop(options.grace_s)
        await updater.close()
        engine.shutdown()
        log.info("rollout server stopped")
    return exit_code

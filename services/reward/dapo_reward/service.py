"""The reward service in one process: the worker pool, the gRPC server and the REST server."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from dapo import auth
from dapo_reward.grpc_server import build_grpc_server
from dapo_reward.http_app import create_http_app
from dapo_reward.pool import WorkerPool
from dapo_reward.scoring import Scorer
from dapo_reward.settings import RewardSettings


class RewardService:
    def __init__(self, options: RewardSettings) -> None:
        self.options = options
        self.pool = WorkerPool(options.workers, options.timeout)
        self.scorer = Scorer(
            self.pool, options.max_response_chars, options.cache_size, math_verify=options.math_verify
        )
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        opts = self.options
        await self.pool.start()
        self.grpc_server, self.grpc_port = await build_grpc_server(
            self.scorer, f"{opts.host}:{opts.grpc_port}"
        )
        await self.grpc_server.start()
        config = uvicorn.Config(
            create_http_app(self.scorer),
            host=opts.host,
            port=opts.http_port,
            log_level="warning",
            lifespan="off",
            **auth.uvicorn_tls_options(),
        )
        self._http = uvicorn.Server(config)
        self._http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # the caller owns signals
        self._http_task = asyncio.create_task(self._http.serve())
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises the bind error
            await asyncio.sleep(0.02)
        self.http_port = self._http.servers[0].sockets[0].getsockname()[1]

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.grpc_server.stop(grace_s)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._http_task
        await self.pool.close()

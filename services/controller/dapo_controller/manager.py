"""Runs queue for the one trainer pool: the manager resumes the active run after a controller restart,
otherwise starts the oldest pending run, and drives it with a RunLoop until it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis

from dapo_controller.loop import Endpoints, RunLoop
from dapo_controller.settings import ControllerSettings
from dapo_controller.store import RunStore
from dapo_controller.wandb_log import start_follower

log = logging.getLogger(__name__)


class RunManager:
    def __init__(self, store: RunStore, settings: ControllerSettings, poll_s: float = 0.5) -> None:
        self.store = store
        self.settings = settings
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self.current: str | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="dapo-run-manager")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _endpoints(self, config: dict) -> Endpoints:
        services = config.get("services", {})
        rollout = list(self.settings.rollout_addresses) or list(services.get("rollout_addresses") or [])
        reward = self.settings.reward_address or services.get("reward_address")
        if not rollout or not reward:
            raise ValueError(
                "the controller knows no rollout servers or reward service: start it with "
                "--rollout-addresses/--reward-address or set services.rollout_addresses/services.reward_address"
            )
        return Endpoints(rollout_addresses=rollout, reward_address=reward)

    async def _supervise(self) -> None:
        while True:
            try:
                await self._drive_next()
            except (aioredis.ConnectionError, aioredis.TimeoutError) as exc:
                # Redis stayed down past the client's retries: wait, then pick the active run up again
                # (it is still `running` in Redis and resumes like after a controller restart).
                log.error("Redis unavailable: %s; retrying", exc)
                self.current = None
                await asyncio.sleep(max(self.poll_s, 1.0))

    async def _drive_next(self) -> None:
        redis: aioredis.Redis = self.store.redis
        while True:
            run = await self.store.active_run() or await self.store.next_pending()
            if run is None:
                await asyncio.sleep(self.poll_s)
                continue
            self.current = run.id
            try:
                loop = RunLoop(run.id, run.config, self.store, redis, self._endpoints(run.config))
            except ValueError as exc:
                await self.store.update_run(run.id, status="failed", error=str(exc))
                await self.store.add_event(run.id, "failed", str(exc))
                continue
            follower = await start_follower(run.id, loop.config, redis)
            if follower is None and loop.config.logger.wandb_enabled:
                await self.store.add_event(run.id, "wandb_unavailable", "W&B logging could not start")
            try:
                status = await loop.run()
            finally:
                if follower is not None:
                    await follower.close()
            log.info("run %s ended: %s", run.id, status)
            self.current = None

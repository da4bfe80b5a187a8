"""Keep a rollout server on the newest published weights: poll the trainer's WeightPublisher.

At start and then every `poll_s` seconds, ask `LatestVersion`; when it is a version of another run than
the one served (each run counts its versions from 0: the next run on these servers), or a newer version
of the served run, and no other update is running, stream `FetchWeights` (from `min_version` served + 1
within the run, from 0 for another run) through the same `WeightUpdater` that serves pushed updates, then
call `on_update` (the server refreshes its health there, as after a pushed update). A publisher that is
not up yet, or a fetch that fails, is logged and retried at the next poll: the trainer may start after
the rollout servers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from dapo import rpc
from dapo.v1 import weights_pb2, weights_pb2_grpc
from dapo.weights import WeightUpdateError
from dapo_rollout.weight_update import StaleVersionError, WeightUpdater

log = logging.getLogger(__name__)


class PublisherFollower:
    def __init__(
        self,
        address: str,
        updater: WeightUpdater,
        poll_s: float = 3.0,
        rpc_timeout_s: float = 10.0,
        fetch_timeout_s: float = 600.0,
        on_update: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.address = address
        self.updater = updater
        self.on_update = on_update
        self.poll_s = poll_s
        self.rpc_timeout_s = rpc_timeout_s
        self.fetch_timeout_s = fetch_timeout_s
        self._channel = rpc.aio_channel(address)
        self._stub = weights_pb2_grpc.WeightPublisherStub(self._channel)
        self._last_error = ""

    async def poll_once(self) -> bool:
        """Fetch and apply the published version if it belongs to another run than the served one or is
        newer than the served one; True if applied."""
        latest = await self._stub.LatestVersion(
            weights_pb2.LatestVersionRequest(), timeout=self.rpc_timeout_s
        )
        served, served_run = self.updater.target.version, self.updater.target.run_id
        if latest.version < 0 or self.updater.is_busy:
            return False
        is_same_run = latest.run_id == served_run
        if is_same_run and latest.version <= served:
            return False
        log.info(
            "fetching weights version %d of run '%s' from %s (serving version %d of run '%s')",
            latest.version,
            latest.run_id,
            self.address,
            served,
            served_run,
        )
        min_version = served + 1 if is_same_run else 0
        call = self._stub.FetchWeights(
            weights_pb2.FetchWeightsRequest(min_version=min_version), timeout=self.fetch_timeout_s
        )
        try:
            result = await self.updater.update(call)
        finally:
            call.cancel()  # the updater may stop reading early (a version already served)
            if self.on_update is not None:
                await self.on_update()
        return result.is_applied

    async def close(self) -> None:
        await self._channel.close()

    async def run(self) -> None:
        """Poll until cancelled."""
        try:
            while True:
                try:
                    await self.poll_once()
                    self._last_error = ""
                except (grpc.aio.AioRpcError, WeightUpdateError, StaleVersionError) as exc:
                    message = (
                        f"{exc.code().name}: {exc.details()}"
                        if isinstance(exc, grpc.aio.AioRpcError)
                        else str(exc)
                    )
                    if message != self._last_error:  # a publisher that is down is logged once, not every poll
                        log.warning("weights from %s: %s", self.address, message)
                    self._last_error = message
                await asyncio.sleep(self.poll_s)
        finally:
            await self.close()

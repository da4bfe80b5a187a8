"""Keep a rollout server on the newest published weights: poll the trainer's WeightPublisher.

At start and then every `poll_s` seconds, ask `LatestVersion`; when it is newer than the served version
and no other update is running, stream `FetchWeights(min_version=served + 1)` through the same
`WeightUpdater` that serves pushed updates. A publisher that is not up yet, or a fetch that fails, is
logged and retried at the next poll: the trainer may start after the rollout servers.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from dapo.v1 import weights_pb2, weights_pb2_grpc
from dapo.weights import WeightUpdateError
from dapo_rollout.weight_update import StaleVersionError, WeightUpdater

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 << 20


class PublisherFollower:
    def __init__(
        self,
        address: str,
        updater: WeightUpdater,
        poll_s: float = 3.0,
        rpc_timeout_s: float = 10.0,
        fetch_timeout_s: float = 600.0,
    ) -> None:
        self.address = address
        self.updater = updater
        self.poll_s = poll_s
        self.rpc_timeout_s = rpc_timeout_s
        self.fetch_timeout_s = fetch_timeout_s
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = weights_pb2_grpc.WeightPublisherStub(self._channel)
        self._last_error = ""

    async def poll_once(self) -> bool:
        """Fetch and apply the newest version if it is newer than the served one; True if applied."""
        latest = await self._stub.LatestVersion(
            weights_pb2.LatestVersionRequest(), timeout=self.rpc_timeout_s
        )
        served = self.updater.target.version
        if latest.version <= served or self.updater.is_busy:
            return False
        log.info("fetching weights version %d from %s (serving %d)", latest.version, self.address, served)
        call = self._stub.FetchWeights(
            weights_pb2.FetchWeightsRequest(min_version=served + 1), timeout=self.fetch_timeout_s
        )
        try:
            result = await self.updater.update(call)
        finally:
            call.cancel()  # the updater may stop reading early (a version already served)
        return result.is_applied

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
            await self._channel.close()

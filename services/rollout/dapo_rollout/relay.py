"""A rollout server's part in a weight fan-out: forward the stream to its children, resume a broken one.

`Downstream` holds the update streams a relay opens to the children its plan names (dapo.relay) and
forwards every message to them, unchanged, as it arrives. A child that fails or takes nothing for the
plan's `stall_s` is dropped, with the reason as its outcome, without holding up the others; the servers
behind a dropped child find their own upstream gone and resume by themselves. `resume_frames` streams
the rest of a version from the publisher (FetchWeights with `resume`) after the upstream broke, and
`report_to_publisher` sends a relay's outcomes there when its upstream, which would have carried its reply,
is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from dapo import relay, rpc
from dapo.v1 import weights_pb2

log = logging.getLogger(__name__)

UPDATE_METHOD = "/dapo.v1.Rollout/UpdateWeights"
FETCH_METHOD = "/dapo.v1.WeightPublisher/FetchWeights"


def error_text(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, asyncio.TimeoutError):
        return "stalled"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Child:
    def __init__(self, plan: weights_pb2.RelayPlan, timeout_s: float) -> None:
        self.plan = plan
        self.channel = rpc.aio_channel(plan.address)
        update = self.channel.stream_unary(
            UPDATE_METHOD,
            request_serializer=None,  # frames are forwarded as they arrived
            response_deserializer=weights_pb2.WeightUpdateReply.FromString,
        )
        self.call = update(timeout=timeout_s)
        self.error: str | None = None


class Downstream:
    """The update streams to a relay's children (none when its plan has no downstream)."""

    def __init__(self, plan: weights_pb2.RelayPlan, timeout_s: float) -> None:
        self.plan = plan
        self.stall_s = relay.stall_seconds(plan)
        self.timeout_s = timeout_s
        self.children = [_Child(p, timeout_s) for p in relay.child_plans(plan)]

    async def open(self, manifest: weights_pb2.WeightManifest) -> None:
        """Connect to each child and send it the manifest with its own plan. A child that cannot be
        reached is replaced by its own children (recursively): the servers behind it still get the stream."""
        pending, self.children = self.children, []
        while pending:
            await asyncio.gather(*(self._connect(c, manifest) for c in pending))
            self.children += pending
            pending = [
                _Child(plan, self.timeout_s)
                for child in pending
                if child.error is not None
                for plan in relay.child_plans(child.plan)
            ]

    async def _connect(self, child: _Child, manifest: weights_pb2.WeightManifest) -> None:
        try:
            await asyncio.wait_for(child.call.wait_for_connection(), self.stall_s)
        except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
            child.error = f"relay to {child.plan.address} failed: {error_text(exc)}"
            log.warning("%s; relaying to the servers behind it instead", child.error)
            child.call.cancel()
            return
        await self._write(child, relay.manifest_frame(manifest, child.plan))

    async def send(self, frame: bytes) -> None:
        live = [c for c in self.children if c.error is None]
        if len(live) == 1:
            await self._write(live[0], frame)
        elif live:
            await asyncio.gather(*(self._write(c, frame) for c in live))

    async def _write(self, child: _Child, frame: bytes) -> None:
        if child.error is not None:
            return
        try:
            await asyncio.wait_for(child.call.write(frame), self.stall_s)
        except (
            grpc.aio.AioRpcError,
            asyncio.TimeoutError,
            grpc.aio.UsageError,
            asyncio.InvalidStateError,  # the child's call ended already (the child died)
        ) as exc:
            child.error = f"relay to {child.plan.address} failed: {error_text(exc)}"
            log.warning("%s", child.error)
            child.call.cancel()

    async def finish(self, is_complete: bool) -> list[weights_pb2.RelayOutcome]:
        """End the streams (cancel them when the stream is incomplete, so the children resume by
        themselves); the outcomes of every child and the servers behind it that reported back."""
        outcomes = await asyncio.gather(*(self._finish(c, is_complete) for c in self.children))
        return [o for child in outcomes for o in child]

    async def _finish(self, child: _Child, is_complete: bool) -> list[weights_pb2.RelayOutcome]:
        try:
            if child.error is None and not is_complete:
                child.call.cancel()
                child.error = "this relay's own stream broke and could not be resumed"
            if child.error is None:
                try:
                    await child.call.done_writing()
                    reply = await child.call
                    return list(reply.relayed)
                except grpc.aio.AioRpcError as exc:
                    child.error = f"relay to {child.plan.address} failed: {error_text(exc)}"
            # The servers behind a failed child resume on their own and report to the publisher.
            return [weights_pb2.RelayOutcome(address=child.plan.address, error=child.error)]
        finally:
            await child.channel.close()


async def resume_frames(
    publisher: str, manifest: weights_pb2.WeightManifest, from_chunk: int, requester: str, timeout_s: float
) -> AsyncIterator[bytes]:
    """The chunks of `manifest`'s version from index `from_chunk` on, from the publisher (raises
    ValueError if the publisher now describes different bytes under that version)."""
    async with rpc.aio_channel(publisher) as channel:
        fetch = channel.unary_stream(
            FETCH_METHOD,
            request_serializer=weights_pb2.FetchWeightsRequest.SerializeToString,
            response_deserializer=None,
        )
        request = weights_pb2.FetchWeightsRequest(
            resume=weights_pb2.ResumePoint(
                run_id=manifest.run_id, version=manifest.version, from_chunk=from_chunk
            ),
            requester=requester,
        )
        call = fetch(request, timeout=timeout_s)
        try:
            first = True
            async for frame in call:
                if first:
                    first = False
                    resumed = weights_pb2.WeightUpdateMessage.FromString(frame)
                    if resumed.WhichOneof("kind") != "manifest" or not relay.same_version(
                        resumed.manifest, manifest
                    ):
                        raise ValueError(f"the publisher's version {manifest.version} is not the one relayed")
                    continue
                yield frame
        finally:
            call.cancel()


async def report_to_publisher(
    publisher: str, run_id: str, version: int, outcomes: list[weights_pb2.RelayOutcome]
) -> None:
    """Tell the publisher the outcomes its fan-out would otherwise not learn (best effort)."""
    try:
        async with rpc.aio_channel(publisher) as channel:
            report = channel.unary_unary(
                "/dapo.v1.WeightPublisher/ReportRelay",
                request_serializer=weights_pb2.RelayReport.SerializeToString,
                response_deserializer=weights_pb2.RelayReportReply.FromString,
            )
            await report(
                weights_pb2.RelayReport(run_id=run_id, version=version, outcomes=outcomes), timeout=10.0
            )
    except grpc.aio.AioRpcError as exc:
        log.warning("could not report the relay of version %d to %s: %s", version, publisher, error_text(exc))

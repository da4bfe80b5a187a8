"""The trainer's side of the weights contract: serve the newest version, fan versions out to rollout servers.

`WeightPublisher` is a gRPC server (the `WeightPublisher` service of weights.proto) running on its own
thread pool, so synchronous training code can use it: `publish(version, tensors, run_id=...)` swaps in the
newest version (within one run, older or equal versions are refused; a version of another run replaces
whatever was published, since every run counts from 0), `FetchWeights(min_version)` streams it to a rollout
server that started late or restarted (NOT_FOUND while nothing at least that new is published),
`LatestVersion` answers the (version, run_id) published, version -1 until the first publish.

A version is encoded once (`EncodedVersion`): its manifest, with every tensor's CRC-32, is built the first
time anything sends it, and every stream of it (a fan-out, a fetch, a resumed fetch) frames its chunks
around slices of the same tensor buffers. `fan_out(servers)` streams the version to the first server with
a relay plan naming the others (dapo.relay): the servers relay it among themselves, so the publisher sends
the version's bytes once whatever the number of servers. A relay whose upstream fails resumes the rest
from here (`FetchWeights` with `resume`, which serves the version being fanned out even once a newer one is
published) and reports itself and the servers behind it (`ReportRelay`); `fan_out` returns one
`RelayOutcome` per server: whether it serves the version, where its bytes came from, or why not.
`push_weights` streams one version to one rollout server's `UpdateWeights`, without a plan.

The publisher holds references to the tensors' bytes, not copies: the caller must not modify them after
`publish` (the trainer publishes a fresh gathered state dict each step).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dapo import relay, rpc
from dapo.v1 import weights_pb2
from dapo.weights import DEFAULT_CHUNK_BYTES, TensorBytes, build_manifest, num_chunks_of

log = logging.getLogger(__name__)

# 1 MiB messages moved 0.5 GB over loopback about twice as fast as 4 MiB ones here (bench/RESULTS.md).
CHUNK_BYTES = 1 << 20
SERVICE_NAME = "dapo.v1.WeightPublisher"
UPDATE_METHOD = "/dapo.v1.Rollout/UpdateWeights"
VersionKey = tuple[str, int]  # (run_id, version)
# How long a fan-out waits, after a plan's stream ended, for its servers without an outcome to resume from
# here (a relay's upstream failing resets its connection at once; a stalled one shows after stall_s)
# before it sends them the version again. A second stream to a server that is resuming is harmless: it
# waits for the first and answers "already served".
STRANDED_GRACE_S = 5.0


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


class EncodedVersion:
    """One version as it crosses the wire: the manifest, built once, and chunk frames cut on demand.

    A chunk's wire form is its small header fields followed by its data field, so each frame is built
    directly around a slice of the tensor's buffer (one copy, where building a `TensorChunk` and
    serializing it would copy the data three times). A unit test checks that the frames parse to exactly
    `encode_update`'s messages.
    """

    def __init__(
        self,
        version: int,
        tensors: Iterable[TensorBytes],
        chunk_bytes: int,
        run_id: str = "",
        on_encode: Callable[[], None] | None = None,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.version = version
        self.run_id = run_id
        self.tensors = list(tensors)
        self.chunk_bytes = chunk_bytes
        self.num_bytes = sum(t.num_bytes for t in self.tensors)
        self.num_chunks = sum(num_chunks_of(t.num_bytes, chunk_bytes) for t in self.tensors)
        self._on_encode = on_encode
        self._manifest: weights_pb2.WeightManifest | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> VersionKey:
        return self.run_id, self.version

    def manifest(self) -> weights_pb2.WeightManifest:
        with self._lock:
            if self._manifest is None:
                self._manifest = build_manifest(
                    self.version, self.tensors, self.chunk_bytes, run_id=self.run_id
                )
                if self._on_encode is not None:
                    self._on_encode()
            return self._manifest

    def frames(self, plan: weights_pb2.RelayPlan | None = None, from_chunk: int = 0) -> Iterator[bytes]:
        """The serialized stream: the manifest (with `plan`), then the chunks from index `from_chunk` on."""
        if not 0 <= from_chunk <= self.num_chunks:
            raise ValueError(f"from_chunk must be in [0, {self.num_chunks}], got {from_chunk}")
        yield relay.manifest_frame(self.manifest(), plan)
        index = 0
        for t in self.tensors:
            data = t.data.cast("B")
            for offset in range(0, max(t.num_bytes, 1), self.chunk_bytes):
                if index >= from_chunk:
                    yield _chunk_frame(self.version, t.name, offset, data[offset : offset + self.chunk_bytes])
                index += 1


def _chunk_frame(version: int, name: str, offset: int, piece: memoryview) -> bytes:
    head = weights_pb2.TensorChunk(version=version, name=name, offset=offset).SerializeToString()
    if len(piece):
        head += b"\x22" + _varint(len(piece))  # field 4 (data), length-delimited
    return b"".join([b"\x12", _varint(len(head) + len(piece)), head, piece])  # field 2 (chunk)


def encode_update_serialized(
    version: int,
    tensors: Iterable[TensorBytes],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    run_id: str = "",
) -> Iterator[bytes]:
    """The messages of `encode_update`, already serialized, copying each tensor byte once."""
    return EncodedVersion(version, tensors, chunk_bytes, run_id).frames()


class _Servicer:
    def __init__(self, publisher: WeightPublisher) -> None:
        self.publisher = publisher

    def FetchWeights(
        self, request: weights_pb2.FetchWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        if request.HasField("resume"):
            resume = request.resume
            encoded = self.publisher.held(resume.run_id, resume.version)
            if encoded is None:
                context.abort(
                    grpc.StatusCode.NOT_FOUND,
                    f"version {resume.version} of run '{resume.run_id}' is no longer held "
                    f"(latest: {self.publisher.latest_version} of run '{self.publisher.latest_run_id}')",
                )
            assert encoded is not None  # abort raised
            if not 0 <= resume.from_chunk <= encoded.num_chunks:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"resume.from_chunk must be in [0, {encoded.num_chunks}], got {resume.from_chunk}",
                )
            self.publisher.add_resumer(resume.run_id, resume.version, request.requester)
            log.info(
                "%s resumes version %d of run '%s' at chunk %d of %d",
                request.requester or context.peer(),
                resume.version,
                resume.run_id,
                resume.from_chunk,
                encoded.num_chunks,
            )
            yield from self.publisher.count_egress(encoded.frames(from_chunk=resume.from_chunk))
            return
        encoded = self.publisher.current()
        if encoded is None or encoded.version < request.min_version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no published version >= {request.min_version} (latest: {self.publisher.latest_version})",
            )
        assert encoded is not None  # abort raised
        yield from self.publisher.count_egress(encoded.frames())

    def LatestVersion(
        self, request: weights_pb2.LatestVersionRequest, context: grpc.ServicerContext
    ) -> weights_pb2.LatestVersionReply:
        run_id, version, _ = self.publisher.snapshot()
        return weights_pb2.LatestVersionReply(version=version, run_id=run_id)

    def ReportRelay(
        self, request: weights_pb2.RelayReport, context: grpc.ServicerContext
    ) -> weights_pb2.RelayReportReply:
        self.publisher.add_report(request)
        return weights_pb2.RelayReportReply()


class WeightPublisher:
    """Holds the newest published version and serves it over gRPC from background threads."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        chunk_bytes: int = CHUNK_BYTES,
        max_workers: int = 8,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.host = host
        self.requested_port = port
        self.chunk_bytes = chunk_bytes
        self.max_workers = max_workers
        self.port: int | None = None
        self._lock = threading.Condition()
        self._current: EncodedVersion | None = None
        # versions kept for resumed fetches while a fan-out of theirs runs, whatever is published since
        self._pinned: dict[VersionKey, tuple[EncodedVersion, int]] = {}
        # ReportRelay outcomes by version, collected while a fan-out of that version runs
        self._reports: dict[VersionKey, dict[str, weights_pb2.RelayOutcome]] = {}
        # the relays that resumed a version from here while its fan-out runs (they will report)
        self._resumers: dict[VersionKey, set[str]] = {}
        self._egress_bytes = 0
        self._num_encodes = 0
        self._server: rpc.SyncServer | None = None

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the weight publisher is not started")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{host}:{self.port}"

    @property
    def latest_version(self) -> int:
        with self._lock:
            return self._current.version if self._current is not None else -1

    @property
    def latest_run_id(self) -> str:
        with self._lock:
            return self._current.run_id if self._current is not None else ""

    @property
    def egress_bytes(self) -> int:
        """Bytes of weight messages this publisher has sent (fan-outs, fetches, pushes through it)."""
        with self._lock:
            return self._egress_bytes

    @property
    def num_encodes(self) -> int:
        """Manifests built (checksum passes over a version's bytes) for every version published so far."""
        with self._lock:
            return self._num_encodes

    def _count_encode(self) -> None:
        with self._lock:
            self._num_encodes += 1

    def snapshot(self) -> tuple[str, int, list[TensorBytes]]:
        """(run_id, version, tensors) of the published version."""
        with self._lock:
            current = self._current
        if current is None:
            return "", -1, []
        return current.run_id, current.version, current.tensors

    def current(self) -> EncodedVersion | None:
        with self._lock:
            return self._current

    def held(self, run_id: str, version: int) -> EncodedVersion | None:
        """The version if it is the published one or one whose fan-out still runs."""
        with self._lock:
            if self._current is not None and self._current.key == (run_id, version):
                return self._current
            pinned = self._pinned.get((run_id, version))
            return pinned[0] if pinned is not None else None

    def count_egress(self, frames: Iterable[bytes]) -> Iterator[bytes]:
        for frame in frames:
            with self._lock:
                self._egress_bytes += len(frame)
            yield frame

    def start(self) -> WeightPublisher:
        if self._server is not None:
            return self
        server = rpc.sync_server([SERVICE_NAME], max_workers=self.max_workers)
        servicer = _Servicer(self)
        # Registered by hand rather than with the generated helper so FetchWeights can yield messages
        # that are serialized already (see `EncodedVersion`).
        server.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE_NAME,
                    {
                        "FetchWeights": grpc.unary_stream_rpc_method_handler(
                            servicer.FetchWeights,
                            request_deserializer=weights_pb2.FetchWeightsRequest.FromString,
                            response_serializer=None,
                        ),
                        "LatestVersion": grpc.unary_unary_rpc_method_handler(
                            servicer.LatestVersion,
                            request_deserializer=weights_pb2.LatestVersionRequest.FromString,
                            response_serializer=weights_pb2.LatestVersionReply.SerializeToString,
                        ),
                        "ReportRelay": grpc.unary_unary_rpc_method_handler(
                            servicer.ReportRelay,
                            request_deserializer=weights_pb2.RelayReport.FromString,
                            response_serializer=weights_pb2.RelayReportReply.SerializeToString,
                        ),
                    },
                ),
            )
        )
        port = server.listen(f"{self.host}:{self.requested_port}")
        server.start()
        server.set_serving(True)
        self._server, self.port = server, port
        log.info("weight publisher on %s:%d", self.host, port)
        return self

    def publish(self, version: int, tensors: Iterable[TensorBytes], run_id: str = "") -> EncodedVersion:
        """Make `version` of run `run_id` the one served; within the run of the last published version it
        must be newer than that one (a version of another run replaces it whatever its number).
        Nothing is encoded here: the manifest is built when the version is first sent."""
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        tensors = list(tensors)
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"version {version}: a tensor name appears twice")
        encoded = EncodedVersion(version, tensors, self.chunk_bytes, run_id, on_encode=self._count_encode)
        with self._lock:
            current = self._current
            if current is not None and run_id == current.run_id and version <= current.version:
                raise ValueError(
                    f"version {version} is not newer than the published version {current.version}"
                )
            self._current = encoded
        return encoded

    # --- fan-out -------------------------------------------------------------------------------------

    def add_report(self, report: weights_pb2.RelayReport) -> None:
        with self._lock:
            outcomes = self._reports.get((report.run_id, report.version))
            if outcomes is None:
                log.info(
                    "relay report for version %d of run '%s' after its fan-out", report.version, report.run_id
                )
                return
            for outcome in report.outcomes:
                outcomes[outcome.address] = outcome
            self._lock.notify_all()

    def add_resumer(self, run_id: str, version: int, address: str) -> None:
        with self._lock:
            resumers = self._resumers.get((run_id, version))
            if resumers is not None and address:
                resumers.add(address)
                self._lock.notify_all()

    def _pin(self, encoded: EncodedVersion) -> None:
        with self._lock:
            _, count = self._pinned.get(encoded.key, (encoded, 0))
            self._pinned[encoded.key] = (encoded, count + 1)
            self._reports.setdefault(encoded.key, {})
            self._resumers.setdefault(encoded.key, set())

    def _unpin(self, encoded: EncodedVersion) -> None:
        with self._lock:
            _, count = self._pinned[encoded.key]
            if count > 1:
                self._pinned[encoded.key] = (encoded, count - 1)
                return
            del self._pinned[encoded.key]
            self._reports.pop(encoded.key, None)
            self._resumers.pop(encoded.key, None)

    def fan_out(
        self,
        encoded: EncodedVersion,
        servers: Sequence[str],
        *,
        fanout: int = 1,
        timeout: float = 600.0,
        stall_s: float = relay.DEFAULT_STALL_S,
    ) -> list[weights_pb2.RelayOutcome]:
        """Stream `encoded` to `servers` through a relay plan; one outcome per server, in their order.

        Returns once every server's outcome is known (from the reply that comes back up the plan, or
        from the reports of relays that resumed after their upstream failed), or at `timeout`. A relay
        that dies before it opened its own downstream (or the root, before it relayed anything) leaves
        servers that never heard of the version: once the plan's stream has ended, the servers that
        neither answered nor resumed within `min(stall_s, STRANDED_GRACE_S)` get a plan of their own.
        """
        servers = list(dict.fromkeys(servers))
        if not servers:
            return []
        deadline = time.monotonic() + timeout
        self._pin(encoded)
        try:
            known: dict[str, weights_pb2.RelayOutcome] = {}
            remaining = servers
            while remaining and time.monotonic() < deadline:
                # the first server that answers is the root; the ones before it are down
                (root, downstream), *_ = relay.split_downstream(remaining, 1)
                unreachable = probe(root, min(stall_s, 10.0))
                if unreachable is not None:
                    log.warning(
                        "rollout server %s unreachable (%s); the next one heads the relay", root, unreachable
                    )
                    known[root] = weights_pb2.RelayOutcome(address=root, error=f"unreachable: {unreachable}")
                    remaining = downstream
                    continue
                plan = weights_pb2.RelayPlan(
                    address=root, downstream=downstream, fanout=fanout, stall_s=stall_s
                )
                try:
                    reply = self._stream(root, encoded.frames(plan), deadline - time.monotonic(), stall_s)
                    known.update({o.address: o for o in reply.relayed})
                except grpc.RpcError as exc:
                    known[root] = weights_pb2.RelayOutcome(address=root, error=rpc_error_text(exc))
                remaining = self._stranded(encoded.key, plan, known, min(stall_s, STRANDED_GRACE_S))
                if remaining:
                    log.warning(
                        "version %d: %d rollout server(s) never got the relayed stream (%s); sending it again",
                        encoded.version,
                        len(remaining),
                        ", ".join(remaining),
                    )
            return self._outcomes(encoded.key, servers, known, deadline, timeout)
        finally:
            self._unpin(encoded)

    def _outcomes(
        self,
        key: VersionKey,
        servers: list[str],
        known: dict[str, weights_pb2.RelayOutcome],
        deadline: float,
        timeout: float,
    ) -> list[weights_pb2.RelayOutcome]:
        """One outcome per server, in their order: from `known` or the relays' reports, waited for
        until `deadline`; a server with neither by then gets a timeout outcome."""
        with self._lock:
            reports = self._reports[key]
            while True:
                merged = {**reports, **known}
                missing = [a for a in servers if a not in merged]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    break
                self._lock.wait(min(left, 1.0))
        return [
            merged.get(a)
            or weights_pb2.RelayOutcome(
                address=a, error=f"no outcome within {timeout:.0f} s (a relay before it failed)"
            )
            for a in servers
        ]

    def _stranded(
        self,
        key: VersionKey,
        plan: weights_pb2.RelayPlan,
        known: dict[str, weights_pb2.RelayOutcome],
        grace_s: float,
    ) -> list[str]:
        """The servers of `plan` whose stream has ended that have no outcome, did not resume from here
        and are not behind a relay that did, after waiting up to `grace_s` for them to do either."""
        subtrees = relay.subtrees(plan)
        deadline = time.monotonic() + grace_s
        with self._lock:
            while True:
                covered = set(known) | set(self._reports[key])
                for resumer in self._resumers[key]:
                    covered.update(subtrees.get(resumer, [resumer]))
                missing = [a for a in relay.subtree(plan) if a not in covered]
                left = deadline - time.monotonic()
                if not missing or left <= 0:
                    return missing
                self._lock.wait(min(left, 0.5))

    def _stream(
        self, address: str, frames: Iterator[bytes], timeout: float, stall_s: float
    ) -> weights_pb2.WeightUpdateReply:
        return stream_update(address, self.count_egress(frames), timeout, stall_s)

    def stop(self, grace: float | None = 5.0) -> None:
        if self._server is not None:
            self._server.stop(grace)
            self._server = None

    def __enter__(self) -> WeightPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def probe(address: str, timeout: float) -> str | None:
    """None if the server at `address` answers a health check within `timeout`, else why not."""
    with rpc.sync_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError as exc:
            return rpc_error_text(exc)
    return None


def rpc_error_text(exc: grpc.RpcError) -> str:
    """'CODE: details' of a failed call."""
    code, details = getattr(exc, "code", None), getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(exc)


def stream_update(
    address: str, frames: Iterator[bytes], timeout: float, stall_s: float | None = None
) -> weights_pb2.WeightUpdateReply:
    """Stream serialized update messages to the rollout server at `address`; its reply.

    With `stall_s`, a stream that takes no new message for that long while there is still data to send
    (a frozen receiver whose flow-control window is full) is cancelled: DEADLINE_EXCEEDED."""
    progress = [time.monotonic(), False]  # last message taken, all sent

    def watched() -> Iterator[bytes]:
        for frame in frames:
            progress[0] = time.monotonic()
            yield frame
        progress[1] = True

    with rpc.sync_channel(address) as channel:
        update = channel.stream_unary(
            UPDATE_METHOD,
            request_serializer=None,  # the messages are serialized already
            response_deserializer=weights_pb2.WeightUpdateReply.FromString,
        )
        if stall_s is None:
            return update(watched(), timeout=timeout)
        future = update.future(watched(), timeout=timeout)
        while True:
            try:
                return future.result(timeout=1.0)
            except grpc.FutureTimeoutError:
                if not progress[1] and time.monotonic() - progress[0] > stall_s:
                    future.cancel()
                    raise StalledError(f"{address} took no weight message for {stall_s:.0f} s") from None


class StalledError(grpc.RpcError):
    """A receiver stopped taking the stream (reported as DEADLINE_EXCEEDED)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self.message


def push_weights(
    address: str,
    version: int,
    tensors: Iterable[TensorBytes],
    timeout: float = 600.0,
    chunk_bytes: int = CHUNK_BYTES,
    run_id: str = "",
) -> weights_pb2.WeightUpdateReply:
    """Stream `version` of run `run_id` to the rollout server at `address` (no relay plan); return its
    reply once it serves the version.

    Raises `grpc.RpcError` on failure: INVALID_ARGUMENT (the server refused the update; it still serves
    its old version), FAILED_PRECONDITION (it already serves a newer version of the same run),
    UNAVAILABLE, DEADLINE_EXCEEDED.
    """
    return stream_update(address, EncodedVersion(version, tensors, chunk_bytes, run_id).frames(), timeout)

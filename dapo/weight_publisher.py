"""The trainer's side of the weights contract: serve the newest version, push versions to rollout servers.

`WeightPublisher` is a gRPC server (the `WeightPublisher` service of weights.proto) running on its own
thread pool, so synchronous training code can use it: `publish(version, tensors, run_id=...)` swaps in the
newest version (within one run, older or equal versions are refused; a version of another run replaces
whatever was published, since every run counts from 0), `FetchWeights(min_version)` streams it to a rollout
server that started late or restarted (NOT_FOUND while nothing at least that new is published),
`LatestVersion` answers the (version, run_id) published, version -1 until the first publish.
`push_weights` streams one version to one rollout server's `UpdateWeights` and returns once the server
serves it.

The publisher holds references to the tensors' bytes, not copies: the caller must not modify them after
`publish` (the trainer publishes a fresh gathered state dict each step).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dapo import rpc
from dapo.v1 import weights_pb2, weights_pb2_grpc
from dapo.weights import DEFAULT_CHUNK_BYTES, TensorBytes, encode_update

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 << 20
# 1 MiB messages moved 0.5 GB over loopback about twice as fast as 4 MiB ones here (bench/RESULTS.md).
CHUNK_BYTES = 1 << 20
SERVICE_NAME = "dapo.v1.WeightPublisher"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class _Servicer(weights_pb2_grpc.WeightPublisherServicer):
    def __init__(self, publisher: WeightPublisher) -> None:
        self.publisher = publisher

    def FetchWeights(
        self, request: weights_pb2.FetchWeightsRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        run_id, version, tensors = self.publisher.snapshot()
        if version < 0 or version < request.min_version:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no published version >= {request.min_version} (latest: {version})",
            )
        yield from encode_update_serialized(version, tensors, self.publisher.chunk_bytes, run_id=run_id)

    def LatestVersion(
        self, request: weights_pb2.LatestVersionRequest, context: grpc.ServicerContext
    ) -> weights_pb2.LatestVersionReply:
        run_id, version, _ = self.publisher.snapshot()
        return weights_pb2.LatestVersionReply(version=version, run_id=run_id)


class WeightPublisher:
    """Holds the newest published version and serves it over gRPC from background threads."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_workers: int = 8,
    ) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.host = host
        self.requested_port = port
        self.chunk_bytes = chunk_bytes
        self.max_workers = max_workers
        self.port: int | None = None
        self._lock = threading.Lock()
        self._version = -1
        self._run_id = ""
        self._tensors: list[TensorBytes] = []
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the weight publisher is not started")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "[::]") else self.host
        return f"{host}:{self.port}"

    @property
    def latest_version(self) -> int:
        with self._lock:
            return self._version

    @property
    def latest_run_id(self) -> str:
        with self._lock:
            return self._run_id

    def snapshot(self) -> tuple[str, int, list[TensorBytes]]:
        """(run_id, version, tensors) of the published version."""
        with self._lock:
            return self._run_id, self._version, self._tensors

    def start(self) -> WeightPublisher:
        if self._server is not None:
            return self
        server = rpc.sync_server(self.max_workers, options=_CHANNEL_OPTIONS)
        servicer = _Servicer(self)
        # Registered by hand rather than with the generated helper so FetchWeights can yield messages
        # that are serialized already (see `encode_update_serialized`).
        server.add_generic_rpc_handlers(
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
                    },
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        port = rpc.listen(server, f"{self.host}:{self.requested_port}")
        server.start()
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server, self.port = server, port
        log.info("weight publisher on %s:%d", self.host, port)
        return self

    def publish(self, version: int, tensors: Iterable[TensorBytes], run_id: str = "") -> None:
        """Make `version` of run `run_id` the one served; within the run of the last published version it
        must be newer than that one (a version of another run replaces it whatever its number)."""
        if version < 0:
            raise ValueError(f"version must be >= 0, got {version}")
        tensors = list(tensors)
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ValueError(f"version {version}: a tensor name appears twice")
        with self._lock:
            if run_id == self._run_id and version <= self._version:
                raise ValueError(f"version {version} is not newer than the published version {self._version}")
            self._run_id, self._version, self._tensors = run_id, version, tensors

    def stop(self, grace: float | None = 5.0) -> None:
        if self._server is not None:
            self._health.enter_graceful_shutdown()
            self._server.stop(grace).wait()
            self._server = None

    def __enter__(self) -> WeightPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_update_serialized(
    version: int,
    tensors: Iterable[TensorBytes],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    run_id: str = "",
) -> Iterator[bytes]:
    """The messages of `encode_update`, already serialized, copying each tensor byte once.

    Building a `TensorChunk` copies its data twice (a `bytes` slice, then into the message) and
    serializing copies it a third time; a chunk's wire form is simply its small header fields followed
    by the data field, so it is framed here directly around a slice of the tensor's buffer. A unit test
    checks that the bytes parse to exactly `encode_update`'s messages.
    """
    tensors = list(tensors)
    messages = encode_update(version, tensors, chunk_bytes, run_id=run_id)
    yield next(messages).SerializeToString()  # the manifest (with the checksums)
    for t in tensors:
        data = t.data.cast("B")
        for offset in range(0, max(t.num_bytes, 1), chunk_bytes):
            piece = data[offset : offset + chunk_bytes]
            head = weights_pb2.TensorChunk(version=version, name=t.name, offset=offset).SerializeToString()
            if len(piece):
                head += b"\x22" + _varint(len(piece))  # field 4 (data), length-delimited
            yield b"".join([b"\x12", _varint(len(head) + len(piece)), head, piece])  # field 2 (chunk)


def push_weights(
    address: str,
    version: int,
    tensors: Iterable[TensorBytes],
    timeout: float = 600.0,
    chunk_bytes: int = CHUNK_BYTES,
    run_id: str = "",
) -> weights_pb2.WeightUpdateReply:
    """Stream `version` of run `run_id` to the rollout server at `address`; return its reply once it
    serves the version.

    Raises `grpc.RpcError` on failure: INVALID_ARGUMENT (the server refused the update; it still serves
    its old version), FAILED_PRECONDITION (it already serves a newer version of the same run),
    UNAVAILABLE, DEADLINE_EXCEEDED.
    """
    with rpc.sync_channel(address, options=_CHANNEL_OPTIONS) as channel:
        update = channel.stream_unary(
            "/dapo.v1.Rollout/UpdateWeights",
            request_serializer=None,  # the messages are serialized already
            response_deserializer=weights_pb2.WeightUpdateReply.FromString,
        )
        return update(encode_update_serialized(version, tensors, chunk_bytes, run_id=run_id), timeout=timeout)

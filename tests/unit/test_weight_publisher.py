"""dapo.weight_publisher: serves the newest version to fetchers, and pushes versions to a rollout server.

The rollout side here is a small stand-in servicer that assembles what it receives with the real
`WeightAssembler` (the real rollout server is tested in tests/integration/test_rollout_*.py).
"""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest

from dapo.v1 import rollout_pb2_grpc, weights_pb2, weights_pb2_grpc
from dapo.weight_publisher import WeightPublisher, push_weights
from dapo.weights import TensorBytes, WeightAssembler, WeightUpdateError


def tensors(seed: int) -> list[TensorBytes]:
    rng = np.random.default_rng(seed)
    return [
        TensorBytes(
            "w", "float32", (64, 32), memoryview(rng.standard_normal((64, 32)).astype(np.float32).tobytes())
        ),
        TensorBytes("b", "float32", (32,), memoryview(rng.standard_normal(32).astype(np.float32).tobytes())),
    ]


@pytest.fixture
def publisher():
    pub = WeightPublisher(host="127.0.0.1", port=0, chunk_bytes=1000).start()
    try:
        yield pub
    finally:
        pub.stop()


def fetch_assembled(address: str, min_version: int) -> WeightAssembler:
    with grpc.insecure_channel(address) as channel:
        stub = weights_pb2_grpc.WeightPublisherStub(channel)
        assembler = WeightAssembler({"w": ("float32", (64, 32)), "b": ("float32", (32,))})
        for message in stub.FetchWeights(
            weights_pb2.FetchWeightsRequest(min_version=min_version), timeout=10
        ):
            assembler.add(message)
        assert assembler.version is not None
        return assembler


def fetch(address: str, min_version: int) -> dict[str, TensorBytes]:
    return fetch_assembled(address, min_version).finish()


def latest_reply(address: str) -> weights_pb2.LatestVersionReply:
    with grpc.insecure_channel(address) as channel:
        stub = weights_pb2_grpc.WeightPublisherStub(channel)
        return stub.LatestVersion(weights_pb2.LatestVersionRequest(), timeout=10)


def latest(address: str) -> int:
    return latest_reply(address).version


def test_nothing_published_answers_minus_one_and_not_found(publisher: WeightPublisher) -> None:
    assert latest(publisher.address) == -1
    with pytest.raises(grpc.RpcError) as info:
        fetch(publisher.address, 0)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_fetch_streams_the_newest_version_in_chunks(publisher: WeightPublisher) -> None:
    publisher.publish(1, tensors(1))
    publisher.publish(2, tensors(2))
    assert latest(publisher.address) == 2
    got = fetch(publisher.address, 1)
    for t in tensors(2):
        assert bytes(got[t.name].data) == bytes(t.data)
    with pytest.raises(grpc.RpcError) as info:
        fetch(publisher.address, 3)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no published version >= 3 (latest: 2)" in info.value.details()


def test_publish_refuses_an_older_version_and_duplicate_names(publisher: WeightPublisher) -> None:
    publisher.publish(5, tensors(5))
    with pytest.raises(ValueError, match="not newer than the published version 5"):
        publisher.publish(5, tensors(6))
    with pytest.raises(ValueError, match="appears twice"):
        publisher.publish(6, tensors(6) + tensors(6)[:1])
    assert publisher.latest_version == 5


def test_versions_are_scoped_to_a_run(publisher: WeightPublisher) -> None:
    publisher.publish(40, tensors(40), run_id="run-a")
    reply = latest_reply(publisher.address)
    assert (reply.version, reply.run_id) == (40, "run-a")
    with pytest.raises(ValueError, match="not newer than the published version 40"):
        publisher.publish(39, tensors(39), run_id="run-a")
    # The next run counts from 0 again: its version 0 replaces run-a's version 40.
    publisher.publish(0, tensors(0), run_id="run-b")
    reply = latest_reply(publisher.address)
    assert (reply.version, reply.run_id) == (0, "run-b")
    assert (publisher.latest_version, publisher.latest_run_id) == (0, "run-b")
    fetched = fetch_assembled(publisher.address, 0)
    assert (fetched.version, fetched.run_id) == (0, "run-b")
    assert bytes(fetched.finish()["w"].data) == bytes(tensors(0)[0].data)
    with pytest.raises(ValueError, match="not newer than the published version 0"):
        publisher.publish(0, tensors(1), run_id="run-b")
    with pytest.raises(ValueError, match="must be >= 0"):
        publisher.publish(-1, tensors(1), run_id="run-c")


def test_the_publisher_answers_health_checks(publisher: WeightPublisher) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(publisher.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="dapo.v1.WeightPublisher"), timeout=5
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


class StandInRollout(rollout_pb2_grpc.RolloutServicer):
    def __init__(self) -> None:
        self.received: dict[int, dict[str, TensorBytes]] = {}
        self.runs: dict[int, str] = {}

    def UpdateWeights(self, request_iterator, context):
        assembler = WeightAssembler({"w": ("float32", (64, 32)), "b": ("float32", (32,))})
        try:
            for message in request_iterator:
                assembler.add(message)
            got = assembler.finish()
        except WeightUpdateError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        assert assembler.version is not None
        self.received[assembler.version] = got
        self.runs[assembler.version] = assembler.run_id
        return weights_pb2.WeightUpdateReply(
            version=assembler.version, num_bytes=assembler.num_bytes, run_id=assembler.run_id
        )


@pytest.fixture
def rollout():
    servicer = StandInRollout()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def test_push_weights_streams_a_version_to_a_rollout_server(rollout) -> None:
    address, servicer = rollout
    reply = push_weights(address, 4, tensors(4), timeout=10, chunk_bytes=500)
    assert reply.version == 4 and reply.num_bytes == 64 * 32 * 4 + 32 * 4
    assert bytes(servicer.received[4]["w"].data) == bytes(tensors(4)[0].data)
    reply = push_weights(address, 0, tensors(0), timeout=10, run_id="run-b")
    assert (reply.version, reply.run_id) == (0, "run-b") and servicer.runs == {4: "", 0: "run-b"}


def test_push_weights_raises_the_servers_refusal(rollout) -> None:
    address, _ = rollout
    with pytest.raises(grpc.RpcError) as info:
        push_weights(address, 4, tensors(4)[:1], timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'b': missing from the manifest" in info.value.details()


def test_push_weights_to_nobody_fails_within_its_timeout() -> None:
    from dapo_rollout.launch import free_port

    with pytest.raises(grpc.RpcError) as info:
        push_weights(f"127.0.0.1:{free_port()}", 1, tensors(1), timeout=2)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_serialized_frames_parse_to_the_encoded_messages() -> None:
    from dapo.weight_publisher import encode_update_serialized
    from dapo.weights import encode_update

    data = tensors(9) + [TensorBytes("empty", "float32", (0,), memoryview(b""))]
    for chunk_bytes in (1, 100, 200, 1 << 20):
        framed = [
            weights_pb2.WeightUpdateMessage.FromString(b)
            for b in encode_update_serialized(3, data, chunk_bytes, run_id="run-x")
        ]
        assert framed == list(encode_update(3, data, chunk_bytes, run_id="run-x"))
        assert framed[0].manifest.run_id == "run-x"

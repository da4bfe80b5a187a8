"""dapo.rpc's server and channel builders, on real gRPC servers over loopback, grpc.aio and thread-pool
alike: reflection lists the services, health answers, message limits refuse what is too large, handler
exceptions come back with the error interceptor's status, and `stop` drains calls in flight while health
says NOT_SERVING. Then the three services built on them: the weight publisher, the reward and the rollout
server answer reflection and health the same way."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from dapo import rpc
from dapo.v1 import reward_pb2, reward_pb2_grpc, weights_pb2, weights_pb2_grpc
from dapo.weight_publisher import WeightPublisher

REWARD = "dapo.v1.Reward"
PUBLISHER = "dapo.v1.WeightPublisher"
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
SMALL_LIMIT = 1 << 20
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class BusyError(Exception):
    """A service-specific failure, mapped to UNAVAILABLE through `error_codes`."""


def busy_is_unavailable(exc: BaseException) -> grpc.StatusCode | None:
    return grpc.StatusCode.UNAVAILABLE if isinstance(exc, BusyError) else None


def score(request: reward_pb2.ScoreRequest) -> reward_pb2.ScoreReply:
    """A stand-in Score: echoes each response as `extracted`, or fails as the verifier name says."""
    if request.verifier == "bug":
        raise RuntimeError("the scorer broke")
    if request.verifier == "bad":
        raise ValueError("verifier: 'bad' is not a known verifier")
    if request.verifier == "busy":
        raise BusyError("all workers busy")
    return reward_pb2.ScoreReply(
        results=[reward_pb2.ScoreResult(id=i.id, extracted=i.response) for i in request.items]
    )


def fetch_frames(request: weights_pb2.FetchWeightsRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
    """Server streaming with messages serialized already (as the publisher's FetchWeights): two, then a
    failure; or an abort of the handler's own."""
    if request.min_version == 99:
        context.abort(grpc.StatusCode.NOT_FOUND, "no published version >= 99")
    for version in (1, 2):
        yield weights_pb2.WeightUpdateMessage(
            manifest=weights_pb2.WeightManifest(version=version)
        ).SerializeToString()
    raise ValueError("min_version: the stream broke")


@dataclass
class Served:
    address: str
    stop: Callable[[float], None]


@contextmanager
def sync_served(max_message_bytes: int = rpc.MAX_MESSAGE_BYTES) -> Iterator[Served]:
    built = rpc.sync_server(
        [REWARD, PUBLISHER],
        max_workers=4,
        error_codes=busy_is_unavailable,
        max_message_bytes=max_message_bytes,
    )

    def slow_aware_score(request: reward_pb2.ScoreRequest, context: grpc.ServicerContext) -> Any:
        if request.verifier == "slow":
            time.sleep(1.0)
        return score(request)

    built.server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REWARD,
                {
                    "Score": grpc.unary_unary_rpc_method_handler(
                        slow_aware_score,
                        request_deserializer=reward_pb2.ScoreRequest.FromString,
                        response_serializer=reward_pb2.ScoreReply.SerializeToString,
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                PUBLISHER,
                {
                    "FetchWeights": grpc.unary_stream_rpc_method_handler(
                        fetch_frames,
                        request_deserializer=weights_pb2.FetchWeightsRequest.FromString,
                        response_serializer=None,
                    )
                },
            ),
        )
    )
    port = built.listen("127.0.0.1:0")
    built.start()
    built.set_serving(True)
    try:
        yield Served(f"127.0.0.1:{port}", built.stop)
    finally:
        built.stop(None)


class AioReward(reward_pb2_grpc.RewardServicer):
    async def Score(self, request: reward_pb2.ScoreRequest, context: Any) -> reward_pb2.ScoreReply:  # noqa: N802
        if request.verifier == "slow":
            await asyncio.sleep(1.0)
        return score(request)


@contextmanager
def aio_served(max_message_bytes: int = rpc.MAX_MESSAGE_BYTES) -> Iterator[Served]:
    """A grpc.aio server on its own event loop in a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)

    async def build() -> tuple[rpc.AioServer, int]:
        built = rpc.aio_server([REWARD], error_codes=busy_is_unavailable, max_message_bytes=max_message_bytes)
        reward_pb2_grpc.add_RewardServicer_to_server(AioReward(), built.server)
        port = built.listen("127.0.0.1:0")
        await built.start()
        await built.set_serving(True)
        return built, port

    built, port = run(build())
    try:
        yield Served(f"127.0.0.1:{port}", lambda grace: run(built.stop(grace)))
    finally:
        run(built.stop(None))
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


BUILDERS = {"aio": aio_served, "sync": sync_served}


def listed_services(address: str) -> set[str]:
    with rpc.sync_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


def method_names(address: str, service: str) -> list[str]:
    """The methods of `service` as described by the server's reflection (its proto file, fetched)."""
    with rpc.sync_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        return [m.name for m in pool.FindServiceByName(service).methods]


def health_status(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:  # a probe: no token, no options
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status)


def score_request(verifier: str = "echo", response: str = "$4$") -> reward_pb2.ScoreRequest:
    return reward_pb2.ScoreRequest(
        verifier=verifier, items=[reward_pb2.ScoreItem(id="a", response=response, ground_truth="4")]
    )


def call_score(address: str, request: reward_pb2.ScoreRequest, **channel_args: Any) -> reward_pb2.ScoreReply:
    with rpc.sync_channel(address, **channel_args) as channel:
        return reward_pb2_grpc.RewardStub(channel).Score(request, timeout=30)


def refusal(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details()


@pytest.mark.parametrize("kind", BUILDERS)
def test_a_built_server_lists_its_services_and_answers_health(kind: str) -> None:
    with BUILDERS[kind]() as served:
        expected = {REWARD, *STANDARD} | ({PUBLISHER} if kind == "sync" else set())
        assert listed_services(served.address) == expected
        assert method_names(served.address, REWARD) == ["Score"]
        assert health_status(served.address) == SERVING
        assert health_status(served.address, REWARD) == SERVING
        assert call_score(served.address, score_request()).results[0].extracted == "$4$"


@pytest.mark.parametrize("kind", BUILDERS)
def test_exceptions_in_handlers_come_back_with_the_interceptors_status(kind: str) -> None:
    with BUILDERS[kind]() as served:
        codes = {
            verifier: refusal(lambda v=verifier: call_score(served.address, score_request(v)))
            for verifier in ("bad", "bug", "busy")
        }
        assert codes == {
            "bad": (grpc.StatusCode.INVALID_ARGUMENT, "verifier: 'bad' is not a known verifier"),
            "bug": (grpc.StatusCode.INTERNAL, "the scorer broke"),
            "busy": (grpc.StatusCode.UNAVAILABLE, "all workers busy"),
        }
        # the server still serves after its handlers failed
        assert call_score(served.address, score_request()).results[0].extracted == "$4$"


def test_a_sync_server_streams_serialized_messages_and_maps_a_failure_midway() -> None:
    with sync_served() as served, rpc.sync_channel(served.address) as channel:
        stub = weights_pb2_grpc.WeightPublisherStub(channel)
        received: list[int] = []
        with pytest.raises(grpc.RpcError) as caught:
            for message in stub.FetchWeights(weights_pb2.FetchWeightsRequest(min_version=0), timeout=10):
                received.append(message.manifest.version)
        assert received == [1, 2]
        assert (caught.value.code(), caught.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "min_version: the stream broke",
        )
        # a handler's own abort keeps its status and details
        aborted = refusal(lambda: list(stub.FetchWeights(weights_pb2.FetchWeightsRequest(min_version=99))))
        assert aborted == (grpc.StatusCode.NOT_FOUND, "no published version >= 99")


@pytest.mark.parametrize("kind", BUILDERS)
def test_messages_over_the_limit_are_resource_exhausted(kind: str) -> None:
    big = "x" * (2 * SMALL_LIMIT)
    with BUILDERS[kind](max_message_bytes=SMALL_LIMIT) as served:
        code, details = refusal(lambda: call_score(served.address, score_request(response=big)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert call_score(served.address, score_request()).results[0].extracted == "$4$"
    # and a channel's own limit refuses a reply larger than it
    with BUILDERS[kind]() as served:
        code, details = refusal(
            lambda: call_score(served.address, score_request(response=big), max_message_bytes=SMALL_LIMIT)
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details


@pytest.mark.parametrize("kind", BUILDERS)
def test_default_limits_take_messages_beyond_grpcs_own_4_mib(kind: str) -> None:
    eight_mib = "y" * (8 << 20)
    with BUILDERS[kind]() as served:
        [result] = call_score(served.address, score_request(response=eight_mib)).results
    assert result.extracted == eight_mib


@pytest.mark.parametrize("kind", BUILDERS)
def test_stop_says_not_serving_and_lets_calls_in_flight_finish(kind: str) -> None:
    with BUILDERS[kind]() as served:
        channel = grpc.insecure_channel(served.address)
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == SERVING
        with rpc.sync_channel(served.address) as calls:
            slow = reward_pb2_grpc.RewardStub(calls).Score.future(score_request("slow"), timeout=30)
            time.sleep(0.3)  # the slow call is in its handler
            stopper = threading.Thread(target=served.stop, args=(10.0,))
            stopper.start()
            assert next(watch).status == NOT_SERVING
            watch.cancel()  # else the stop waits its whole grace for this stream
            assert slow.result().results[0].extracted == "$4$"
            stopper.join(15)
            assert not stopper.is_alive()
        channel.close()
        with pytest.raises(grpc.RpcError):
            health_status(served.address)


def test_the_weight_publisher_answers_reflection_and_health() -> None:
    with WeightPublisher(host="127.0.0.1", port=0) as publisher:
        assert listed_services(publisher.address) == {PUBLISHER, *STANDARD}
        assert method_names(publisher.address, PUBLISHER) == ["FetchWeights", "LatestVersion", "ReportRelay"]
        assert health_status(publisher.address, PUBLISHER) == SERVING
        # its own aborts still come back as they were (nothing published yet)
        with rpc.sync_channel(publisher.address) as channel:
            stub = weights_pb2_grpc.WeightPublisherStub(channel)
            code, details = refusal(
                lambda: list(stub.FetchWeights(weights_pb2.FetchWeightsRequest(), timeout=10))
            )
        assert (code, details) == (grpc.StatusCode.NOT_FOUND, "no published version >= 0 (latest: -1)")


def test_the_reward_service_answers_reflection_and_health() -> None:
    from dapo_reward.settings import RewardSettings

    from tests.integration.test_reward_service import Running

    running = Running(RewardSettings(grpc_port=0, http_port=0, workers=1, timeout=2, cache_size=0))
    try:
        assert listed_services(running.grpc_address) == {REWARD, *STANDARD}
        assert health_status(running.grpc_address, REWARD) == SERVING
    finally:
        running.stop()


def test_the_rollout_server_answers_reflection_and_health(tmp_path: Path) -> None:
    from tests.weight_receiver import Receivers

    specs = {"w": ("float32", (4,))}
    with Receivers(1, specs, tmp_path, None) as receivers:
        receivers.wait_ready()
        [address] = receivers.addresses
        assert listed_services(address) == {"dapo.v1.Rollout", *STANDARD}
        assert method_names(address, "dapo.v1.Rollout") == ["Generate", "UpdateWeights", "Status"]
        # answered without a token (its state is the receiver's business: no weights yet)
        assert health_status(address) in (SERVING, NOT_SERVING)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another socket listens on (without SO_REUSEPORT, so gRPC cannot share it)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def test_a_taken_port_is_a_listen_error_naming_the_address(held_port: int) -> None:
    built = rpc.sync_server([REWARD], max_workers=1)
    with pytest.raises(
        rpc.ListenError, match=rf"^cannot listen on 127\.0\.0\.1:{held_port}: the port is in use"
    ):
        built.listen(f"127.0.0.1:{held_port}")
    built.stop(None)


def test_a_service_whose_port_is_taken_exits_with_one_line_saying_so(held_port: int) -> None:
    command = [sys.executable, "-m", "dapo.cli", "reward", "--host", "127.0.0.1"]
    command += ["--grpc-port", str(held_port), "--http-port", "0", "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"error: cannot listen on 127.0.0.1:{held_port}: the port is in use" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr

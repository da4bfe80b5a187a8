"""The controller's reward channel spreads Score calls over several real reward services (each with its
own worker pool, gRPC and HTTP ports): a target listing two addresses (`ipv4:a,b`, what a headless
Service's DNS name resolves to) gets calls on both, in turn; with one of them stopped the other takes
every call; a single `host:port` (local runs, compose) still works."""

from __future__ import annotations

import asyncio

import httpx
from dapo_controller.loop import score_request
from dapo_controller.reward_client import reward_channel
from dapo_reward.service import RewardService
from dapo_reward.settings import RewardSettings
from prometheus_client.parser import text_string_to_metric_families

from dapo.config.schema import MathEnvConfig
from dapo.v1 import reward_pb2_grpc


async def _items_scored(service: RewardService) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{service.http_port}/metrics", timeout=10)).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "dapo_reward_items"
        for sample in family.samples
        if sample.name == "dapo_reward_items_total"
    )


async def _score(stub: reward_pb2_grpc.RewardStub, num_calls: int) -> None:
    request = score_request(MathEnvConfig(verifier="dapo"), [("Answer: 4", "4"), ("Answer: 5", "4")])
    for _ in range(num_calls):
        reply = await stub.Score(request, timeout=30)
        assert [r.correct for r in reply.results] == [True, False]


def test_score_calls_alternate_over_every_resolved_reward_server() -> None:
    async def scenario() -> None:
        services = [
            RewardService(RewardSettings(grpc_port=0, http_port=0, workers=1, timeout=2, cache_size=0))
            for _ in range(2)
        ]
        for service in services:
            await service.start()
        first, second = services
        try:
            target = f"ipv4:127.0.0.1:{first.grpc_port},127.0.0.1:{second.grpc_port}"
            channel = reward_channel(target)
            stub = reward_pb2_grpc.RewardStub(channel)
            # Calls go only to connected servers: the first ones may all land on the first to connect.
            for _ in range(20):
                await _score(stub, 1)
                if all([await _items_scored(s) for s in services]):
                    break
            before = [await _items_scored(s) for s in services]
            assert all(before), before
            await _score(stub, 10)
            counts = [await _items_scored(s) - b for s, b in zip(services, before, strict=True)]
            assert counts == [10.0, 10.0], counts  # 2 items a call, 5 calls each: in turn, not all on one

            await second.stop(1)
            done = await _items_scored(first)
            await _score(stub, 4)
            assert await _items_scored(first) == done + 8  # the stopped server is skipped, no call fails
            await channel.close()

            single = reward_channel(f"127.0.0.1:{first.grpc_port}")
            await _score(reward_pb2_grpc.RewardStub(single), 1)
            assert await _items_scored(first) == done + 10
            await single.close()
        finally:
            await first.stop(1)

    asyncio.run(scenario())

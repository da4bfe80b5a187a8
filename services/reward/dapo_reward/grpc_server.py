"""The reward service's gRPC front end: `Score`, the standard health service and reflection."""

from __future__ import annotations

import grpc

from dapo import rpc
from dapo.v1 import reward_pb2, reward_pb2_grpc
from dapo_reward.scoring import Item, Scorer

GRADING_FIELDS = [f.name for f in reward_pb2.MathVerifyOptions.DESCRIPTOR.fields]

# Each client connection is closed after this long (once its calls finish, within the grace), so that
# clients balancing over a headless Service resolve it again and find pods added since.
MAX_CONNECTION_AGE_S = 120
MAX_CONNECTION_AGE_GRACE_S = 3600
SERVICE_NAME = reward_pb2.DESCRIPTOR.services_by_name["Reward"].full_name


class RewardServicer(reward_pb2_grpc.RewardServicer):
    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreReply:  # noqa: N802
        items = [Item(i.id, i.response, i.ground_truth) for i in request.items]
        options = request.math_verify
        overrides = {name: getattr(options, name) for name in GRADING_FIELDS if options.HasField(name)}
        results = await self.scorer.score(request.verifier or "math_verify", items, request.binary, overrides)
        return reward_pb2.ScoreReply(
            results=[
                reward_pb2.ScoreResult(
                    id=r.id, score=r.score, correct=r.correct, extracted=r.extracted, error=r.error
                )
                for r in results
            ]
        )


async def build_grpc_server(scorer: Scorer, address: str) -> tuple[rpc.AioServer, int]:
    """The Reward service on a server of `dapo.rpc` bound to `address`, SERVING; returns (server, port)."""
    server = rpc.aio_server(
        [SERVICE_NAME],
        options=[
            ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_S * 1000),
            ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_S * 1000),
        ],
    )
    reward_pb2_grpc.add_RewardServicer_to_server(RewardServicer(scorer), server.server)
    await server.set_serving(True)
    return server, server.listen(address)

"""An asyncio client of one rollout server, for the controller, tests and benchmarks.

    async with RolloutClient("127.0.0.1:50051") as client:
        results = await client.generate([[1, 2, 3]], SamplingParams(n=4, temperature=1.0, max_tokens=32))
        await client.update_weights(version, tensors, run_id="run-1")  # list[dapo.weights.TensorBytes]
        status = await client.status()

Prompts are token-id lists, or chats as lists of {"role", "content"} dicts (rendered server-side with the
model's chat template). gRPC errors surface as `grpc.aio.AioRpcError` with the server's status code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from dapo import rpc
from dapo.v1 import rollout_pb2, rollout_pb2_grpc, weights_pb2
from dapo.weight_publisher import CHUNK_BYTES, encode_update_serialized
from dapo.weights import TensorBytes

PromptLike = Sequence[int] | Sequence[Mapping[str, str]] | rollout_pb2.Prompt


def to_prompt(prompt: PromptLike) -> rollout_pb2.Prompt:
    """A `Prompt` message from token ids or a chat (a list of {"role", "content"} dicts)."""
    if isinstance(prompt, rollout_pb2.Prompt):
        return prompt
    items = list(prompt)
    if items and isinstance(items[0], Mapping):
        messages = [rollout_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in items]  # type: ignore[index]
        return rollout_pb2.Prompt(chat=rollout_pb2.ChatPrompt(messages=messages))
    return rollout_pb2.Prompt(token_ids=rollout_pb2.TokenIds(ids=[int(t) for t in items]))  # type: ignore[arg-type,call-overload]


def sampling_params(
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_tokens: int = 16,
    stop: Iterable[str] = (),
    seed: int | None = None,
) -> rollout_pb2.SamplingParams:
    params = rollout_pb2.SamplingParams(
        n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, stop=list(stop)
    )
    if seed is not None:
        params.seed = seed
    return params


class RolloutClient:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = rpc.aio_channel(address)
        self.stub = rollout_pb2_grpc.RolloutStub(self.channel)

    async def __aenter__(self) -> RolloutClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def generate(
        self,
        prompts: Sequence[PromptLike],
        sampling: rollout_pb2.SamplingParams | None = None,
        timeout: float | None = 600.0,
        request_id: str = "",
    ) -> list[rollout_pb2.PromptResult]:
        """One PromptResult per prompt, each with `sampling.n` samples (token ids, log-probs, version)."""
        request = rollout_pb2.GenerateRequest(
            prompts=[to_prompt(p) for p in prompts],
            sampling=sampling if sampling is not None else sampling_params(),
            request_id=request_id,
        )
        reply = await self.stub.Generate(request, timeout=timeout)
        return list(reply.results)

    async def status(self, timeout: float | None = 10.0) -> rollout_pb2.StatusReply:
        return await self.stub.Status(rollout_pb2.StatusRequest(), timeout=timeout)

    async def update_weights(
        self,
        version: int,
        tensors: Iterable[TensorBytes],
        chunk_bytes: int = CHUNK_BYTES,
        timeout: float | None = 600.0,
        run_id: str = "",
    ) -> weights_pb2.WeightUpdateReply:
        """Stream one version of run `run_id` (manifest, then chunks); returns once the server serves it."""
        update = self.channel.stream_unary(
            "/dapo.v1.Rollout/UpdateWeights",
            request_serializer=None,  # framed by encode_update_serialized
            response_deserializer=weights_pb2.WeightUpdateReply.FromString,
        )
        frames = encode_update_serialized(version, tensors, chunk_bytes, run_id=run_id)

        async def stream() -> AsyncIterator[bytes]:
            for frame in frames:
                yield frame

        return await update(stream(), timeout=timeout)

    async def update_weights_raw(
        self, messages: Iterable[weights_pb2.WeightUpdateMessage], timeout: float | None = 600.0
    ) -> weights_pb2.WeightUpdateReply:
        """Stream the given messages as they are (tests use it to send malformed updates)."""

        async def stream() -> AsyncIterator[weights_pb2.WeightUpdateMessage]:
            for message in messages:
                yield message

        return await self.stub.UpdateWeights(stream(), timeout=timeout)

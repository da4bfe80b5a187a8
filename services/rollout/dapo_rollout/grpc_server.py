"""The rollout gRPC server (grpc.aio): Generate, UpdateWeights, Status, and the standard health service.

The server is built by `dapo.rpc` (message limits, token check, health, reflection); its error
interceptor maps exceptions to status codes: bad input (`ValueError`, `WeightUpdateError`, vLLM's
client errors) is INVALID_ARGUMENT, an update older than the served version of the same run
FAILED_PRECONDITION, a server without weights (or with a failed engine) UNAVAILABLE, anything else
INTERNAL. Health reports SERVING only while a weights version is loaded and the engine is alive.
Status and every sample report the run whose policy version is served (versions count per run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from dapo import rpc
from dapo.v1 import rollout_pb2, rollout_pb2_grpc
from dapo.weights import WeightUpdateError
from dapo_rollout.engine import NotReadyError, RolloutEngine, SamplingSpec
from dapo_rollout.metrics import RolloutMetrics
from dapo_rollout.weight_update import StaleVersionError, UpdateResult, WeightUpdater

log = logging.getLogger(__name__)

SERVICE_NAME = "dapo.v1.Rollout"


def status_code_for(exc: BaseException) -> grpc.StatusCode | None:
    """Rollout-specific codes; the shared interceptor maps other ValueErrors to INVALID_ARGUMENT."""
    if isinstance(exc, StaleVersionError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, NotReadyError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, WeightUpdateError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if any(cls.__name__ == "VLLMClientError" for cls in type(exc).__mro__):
        return grpc.StatusCode.INVALID_ARGUMENT
    return None


def sampling_spec(params: rollout_pb2.SamplingParams) -> SamplingSpec:
    """Validate the request's sampling settings (0 for n means 1, 0 for top_p means 1.0)."""
    n = params.n or 1
    if n < 1:
        raise ValueError(f"sampling.n must be >= 1, got {params.n}")
    if params.max_tokens < 1:
        raise ValueError(f"sampling.max_tokens must be >= 1, got {params.max_tokens}")
    if not params.temperature >= 0:
        raise ValueError(f"sampling.temperature must be >= 0, got {params.temperature}")
    top_p = params.top_p or 1.0
    if not 0 < top_p <= 1:
        raise ValueError(f"sampling.top_p must be in (0, 1], got {params.top_p}")
    if params.top_k < -1:
        raise ValueError(f"sampling.top_k must be -1, 0 (off) or positive, got {params.top_k}")
    if any(not s for s in params.stop):
        raise ValueError("sampling.stop: empty stop string")
    return SamplingSpec(
        n=n,
        temperature=float(params.temperature),
        top_p=float(top_p),
        top_k=max(0, int(params.top_k)),
        max_tokens=int(params.max_tokens),
        stop=tuple(params.stop),
        seed=int(params.seed) if params.HasField("seed") else None,
    )


class RolloutServicer(rollout_pb2_grpc.RolloutServicer):
    def __init__(
        self,
        engine: RolloutEngine,
        updater: WeightUpdater,
        metrics: RolloutMetrics,
        health: health_aio.HealthServicer,
    ) -> None:
        self.engine = engine
        self.updater = updater
        self.metrics = metrics
        self.health = health
        self._updates: set[asyncio.Future] = set()

    async def refresh_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.engine.is_ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        self.metrics.policy_version.set(self.engine.version)

    def _prompt_ids(self, index: int, prompt: rollout_pb2.Prompt, max_tokens: int) -> list[int]:
        kind = prompt.WhichOneof("kind")
        if kind == "token_ids":
            ids = list(prompt.token_ids.ids)
        elif kind == "chat":
            ids = self.engine.render_chat([(m.role, m.content) for m in prompt.chat.messages])
        elif kind == "text":
            ids = self.engine.tokenize(prompt.text)
        else:
            raise ValueError(f"prompt {index}: none of token_ids, chat and text is set")
        self.engine.check_prompt(index, ids, max_tokens)
        return ids

    async def Generate(
        self, request: rollout_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.GenerateReply:
        started = time.perf_counter()
        if not request.prompts:
            raise ValueError("no prompts")
        spec = sampling_spec(request.sampling)
        prompts = [self._prompt_ids(i, p, spec.max_tokens) for i, p in enumerate(request.prompts)]
        self.metrics.requests_in_flight.inc()
        try:
            outcome = await self.engine.generate(prompts, spec)
        except asyncio.CancelledError:
            self.metrics.requests.labels("cancelled").inc()
            raise
        except Exception:
            self.metrics.requests.labels("error").inc()
            raise
        finally:
            self.metrics.requests_in_flight.dec()
        self.metrics.observe_generate(
            outcome.num_prompt_tokens, outcome.num_tokens, time.perf_counter() - started
        )
        return rollout_pb2.GenerateReply(
            results=[
                rollout_pb2.PromptResult(
                    prompt_token_ids=ids,
                    samples=[
                        rollout_pb2.Sample(
                            token_ids=s.token_ids,
                            logprobs=s.logprobs,
                            finish_reason=s.finish_reason,
                            text=s.text,
                            policy_version=outcome.version,
                            run_id=outcome.run_id,
                        )
                        for s in group
                    ],
                )
                for ids, group in zip(prompts, outcome.samples, strict=True)
            ]
        )

    async def UpdateWeights(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        from dapo.v1 import weights_pb2

        # Its own task: when the caller goes away mid-stream (a relay before this server died), gRPC
        # cancels this handler, but the update carries on, resumed from the publisher (WeightUpdater).
        update = asyncio.ensure_future(self._update(request_iterator))
        self._updates.add(update)
        update.add_done_callback(_forget(self._updates))
        result = await asyncio.shield(update)
        return weights_pb2.WeightUpdateReply(
            version=result.version,
            num_bytes=result.num_bytes,
            duration_s=result.duration_s,
            run_id=result.run_id,
            relayed=result.relayed,
        )

    async def _update(self, request_iterator: Any) -> UpdateResult:
        try:
            result = await self.updater.update(request_iterator)
        except (WeightUpdateError, StaleVersionError):
            self.metrics.updates_rejected.inc()
            await _drain(request_iterator)
            raise
        finally:
            await self.refresh_health()
        if result.relayed:
            if not result.relayed[0].is_served:
                self.metrics.updates_rejected.inc()
        elif not result.is_applied:
            await _drain(request_iterator)
        return result

    async def Status(
        self, request: rollout_pb2.StatusRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.StatusReply:
        return rollout_pb2.StatusReply(
            policy_version=self.engine.version,
            model=self.engine.options.model,
            requests_in_flight=self.engine.num_in_flight,
            tokens_per_second=self.metrics.tokens_per_second(),
            ready=self.engine.is_ready,
            run_id=self.engine.run_id,
        )


def _forget(tasks: set[asyncio.Future]) -> Any:
    def done(task: asyncio.Future) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an update whose caller left logs its own failure

    return done


async def _drain(request_iterator: Any) -> None:
    """Read what the client still sends before answering: a grpc.aio client whose stream is cut by an
    early answer can report INTERNAL ("Internal error from Core") instead of the server's status."""
    async for _ in request_iterator:
        pass


def add_rollout_service(servicer: RolloutServicer, server: grpc.aio.Server) -> None:
    """The Rollout service, registered by hand so that UpdateWeights receives each message's bytes as
    they arrived (a relay forwards them unchanged)."""
    from dapo.v1 import weights_pb2

    handlers = {
        "Generate": grpc.unary_unary_rpc_method_handler(
            servicer.Generate,
            request_deserializer=rollout_pb2.GenerateRequest.FromString,
            response_serializer=rollout_pb2.GenerateReply.SerializeToString,
        ),
        "UpdateWeights": grpc.stream_unary_rpc_method_handler(
            servicer.UpdateWeights,
            request_deserializer=None,
            response_serializer=weights_pb2.WeightUpdateReply.SerializeToString,
        ),
        "Status": grpc.unary_unary_rpc_method_handler(
            servicer.Status,
            request_deserializer=rollout_pb2.StatusRequest.FromString,
            response_serializer=rollout_pb2.StatusReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


def build_server(servicer: RolloutServicer, address: str) -> tuple[rpc.AioServer, int]:
    """The Rollout service on a server of `dapo.rpc` bound to `address`, its health answered by
    `servicer.health`; returns (server, port)."""
    server = rpc.aio_server([SERVICE_NAME], error_codes=status_code_for, health=servicer.health)
    add_rollout_service(servicer, server.server)
    return server, server.listen(address)

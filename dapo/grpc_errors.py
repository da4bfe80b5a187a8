"""One gRPC server interceptor that turns exceptions into status codes, for every dapo service.

Bad input (`ValueError` and its subclasses) is INVALID_ARGUMENT; a service adds its own mappings
(e.g. "not ready" is UNAVAILABLE) through `extra`; anything else is INTERNAL and logged with its
traceback. Covers unary and client-streaming handlers (the only kinds dapo's services define).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)
CodeFor = Callable[[BaseException], "grpc.StatusCode | None"]


def default_code(exc: BaseException, extra: CodeFor | None = None) -> grpc.StatusCode:
    code = extra(exc) if extra is not None else None
    if code is not None:
        return code
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, extra: CodeFor | None = None) -> None:
        self.extra = extra

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._guard(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._guard(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _guard(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                code = default_code(exc, self.extra)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                else:
                    log.info("%s refused (%s): %s", method, code.name, exc)
                await context.abort(code, str(exc) or type(exc).__name__)

        return guarded

"""One gRPC server interceptor that turns exceptions into status codes, for every dapo service.

Bad input (`ValueError` and its subclasses) is INVALID_ARGUMENT; a service adds its own mappings
(e.g. "not ready" is UNAVAILABLE) through `extra`; anything else is INTERNAL and logged with its
traceback. A handler's own `context.abort` passes through unchanged. `ErrorInterceptor` (grpc.aio
servers) covers unary and client-streaming handlers, `SyncErrorInterceptor` (thread-pool servers) unary,
client-streaming and server-streaming ones: the kinds dapo's services define. Both keep each handler's
serializers, so a handler that yields messages serialized already (FetchWeights) still can.
`dapo.rpc` puts one in front of every server it builds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
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


def _refusal(exc: BaseException, method: str, extra: CodeFor | None) -> tuple[grpc.StatusCode, str]:
    """The status and details a failed call ends with; logs it (with the traceback when INTERNAL)."""
    code = default_code(exc, extra)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
    else:
        log.info("%s refused (%s): %s", method, code.name, exc)
    return code, str(exc) or type(exc).__name__


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def _wrapped(
    handler: grpc.RpcMethodHandler, unary: Wrap, server_streaming: Wrap | None
) -> grpc.RpcMethodHandler:
    """`handler` with its behaviour wrapped (unary and client-streaming ones by `unary`, server-streaming
    ones by `server_streaming`), its serializers kept; other kinds unchanged."""
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    if handler.unary_stream is not None and server_streaming is not None:
        return grpc.unary_stream_rpc_method_handler(server_streaming(handler.unary_stream), **serializers)
    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, extra: CodeFor | None = None) -> None:
        self.extra = extra

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        return _wrapped(handler, lambda behavior: self._guard(behavior, method), None)

    def _guard(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await context.abort(*_refusal(exc, method, self.extra))

        return guarded


class SyncErrorInterceptor(grpc.ServerInterceptor):
    """The same mapping for thread-pool servers."""

    def __init__(self, extra: CodeFor | None = None) -> None:
        self.extra = extra

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        return _wrapped(
            handler,
            lambda behavior: self._guard(behavior, method),
            lambda behavior: self._guard_stream(behavior, method),
        )

    def _refuse(self, exc: Exception, method: str, context: grpc.ServicerContext) -> None:
        # A sync `context.abort` raises a bare Exception with the status already set: let it through.
        if context.code() is not None:
            raise exc
        context.abort(*_refusal(exc, method, self.extra))

    def _guard(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except Exception as exc:
                self._refuse(exc, method, context)

        return guarded

    def _guard_stream(self, behavior: Callable[..., Any], method: str) -> Callable[..., Iterator[Any]]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except Exception as exc:
                self._refuse(exc, method, context)

        return guarded

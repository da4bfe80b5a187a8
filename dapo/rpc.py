"""Every gRPC server and channel of dapo is made here: service-token authentication and optional TLS.

Servers (`aio_server`, `sync_server`, then `listen`) get one interceptor that requires the deployment's
service token ($DAPO_SERVICE_TOKEN, see `dapo.auth`) in the call metadata `authorization: Bearer <token>`,
compared in constant time; a missing or wrong token is UNAUTHENTICATED before any handler runs. The
standard health service stays open (probes carry no token). Without a configured token servers are open,
and `listen` warns when one binds beyond loopback.

Channels (`aio_channel`, `sync_channel`) send the token on every call, and use TLS when
$DAPO_TLS_CERT_FILE is set: they verify the server against $DAPO_TLS_CA_FILE (the system roots without
it) and present the same certificate for mutual TLS. Servers with a CA require client certificates.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from typing import Any, NamedTuple

import grpc

from dapo import auth

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
Options = Sequence[tuple[str, Any]]
UNAUTHENTICATED_DETAILS = (
    f"missing or wrong service token (metadata '{METADATA_KEY}: Bearer <{auth.SERVICE_TOKEN}>')"
)


def is_authorized(metadata: Sequence[tuple[str, Any]] | None, token: str) -> bool:
    """Whether the call metadata carries `Bearer <token>` (constant-time comparison)."""
    expected = f"Bearer {token}".encode()
    for key, value in metadata or ():
        if key == METADATA_KEY:
            given = value.encode() if isinstance(value, str) else bytes(value)
            return hmac.compare_digest(given, expected)
    return False


def _needs_token(method: str) -> bool:
    return not method.startswith(OPEN_PREFIXES)


def _denied_handler(handler: grpc.RpcMethodHandler, deny: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` whose behaviour is `deny`."""
    kind = (
        grpc.stream_stream_rpc_method_handler
        if handler.request_streaming and handler.response_streaming
        else grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_stream_rpc_method_handler
        if handler.response_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return kind(
        deny,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class AioTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the service token (grpc.aio servers)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not _needs_token(method):
            return handler
        if is_authorized(handler_call_details.invocation_metadata, self.token):
            return handler

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            log.warning("%s refused: %s", method, UNAUTHENTICATED_DETAILS)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)

        return _denied_handler(handler, deny)


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses calls without the service token (thread-pool servers); the same check as the aio one."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not _needs_token(method):
            return handler
        if is_authorized(handler_call_details.invocation_metadata, self.token):
            return handler

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            log.warning("%s refused: %s", method, UNAUTHENTICATED_DETAILS)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)

        return _denied_handler(handler, deny)


def aio_server(
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (), options: Options = ()
) -> grpc.aio.Server:
    """A grpc.aio server; the token check (when a token is configured) runs before `interceptors`."""
    token = auth.service_token()
    chain = [AioTokenInterceptor(token)] if token else []
    return grpc.aio.server(interceptors=[*chain, *interceptors], options=list(options))


def sync_server(max_workers: int, options: Options = ()) -> grpc.Server:
    """A thread-pool gRPC server with the token check (when a token is configured)."""
    token = auth.service_token()
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=[TokenInterceptor(token)] if token else [],
        options=list(options),
    )


def server_credentials(tls: auth.TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def listen(server: grpc.Server | grpc.aio.Server, address: str) -> int:
    """Bind `address` (TLS when configured); return the port. Raises OSError if it cannot listen."""
    tls = auth.tls_files()
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(tls))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    host = address.rsplit(":", 1)[0]
    auth.warn_if_exposed(host, f"the gRPC server on {address}", log)
    return int(port)


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self.pair = (METADATA_KEY, f"Bearer {token}")

    def _details(self, details: Any) -> _CallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), self.pair],
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return continuation(self._details(details), request_iterator)


# grpc.aio files an interceptor under the first call kind it implements only: one class per kind.
class _AioToken:
    def __init__(self, token: str) -> None:
        self.pair = (METADATA_KEY, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self.pair)
        return details._replace(metadata=metadata)  # type: ignore[attr-defined,no-any-return]


class _AioUnaryUnaryToken(_AioToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStreamToken(_AioToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnaryToken(_AioToken, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _AioStreamStreamToken(_AioToken, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def _aio_token_interceptors(token: str | None) -> list[grpc.aio.ClientInterceptor] | None:
    if not token:
        return None
    kinds = (_AioUnaryUnaryToken, _AioUnaryStreamToken, _AioStreamUnaryToken, _AioStreamStreamToken)
    return [kind(token) for kind in kinds]


def channel_credentials(tls: auth.TlsFiles) -> grpc.ChannelCredentials:
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _channel_options(options: Options, tls: auth.TlsFiles | None) -> list[tuple[str, Any]]:
    out = list(options)
    if tls is not None and tls.server_name:
        out.append(("grpc.ssl_target_name_override", tls.server_name))
    return out


def aio_channel(address: str, options: Options = ()) -> grpc.aio.Channel:
    """A grpc.aio channel to `address` that sends the service token (and speaks TLS when configured)."""
    token, tls = auth.service_token(), auth.tls_files()
    interceptors = _aio_token_interceptors(token)
    opts = _channel_options(options, tls)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=opts, interceptors=interceptors)


def sync_channel(address: str, options: Options = ()) -> grpc.Channel:
    """A blocking channel to `address` that sends the service token (and speaks TLS when configured)."""
    token, tls = auth.service_token(), auth.tls_files()
    opts = _channel_options(options, tls)
    if tls is None:
        channel = grpc.insecure_channel(address, options=opts)
    else:
        channel = grpc.secure_channel(address, channel_credentials(tls), options=opts)
    return grpc.intercept_channel(channel, _SyncToken(token)) if token else channel

"""Every gRPC server and channel of dapo is made here, all the same way.

Servers: `aio_server` (grpc.aio) and `sync_server` (a thread pool, for the trainer's weight publisher)
build one with, for every service alike,
- the message limits (`MAX_MESSAGE_BYTES` sent and received),
- the token check: a call without the deployment's service token ($DAPO_SERVICE_TOKEN, see `dapo.auth`)
  in the metadata `authorization: Bearer <token>` (compared in constant time) is UNAUTHENTICATED before
  any handler runs. Without a configured token servers are open, and `listen` warns when one binds beyond
  loopback;
- the error interceptor of `dapo.grpc_errors` (exceptions become status codes; a service adds its own
  mapping with `error_codes`);
- the standard health service, open to probes without a token (each service sets its own states with
  `set_serving`; until then "" answers SERVING and a service name NOT_FOUND, as grpc_health's servicer
  starts), and server reflection listing the server's services;
- `listen` (TLS when configured) and a graceful `stop(grace)`: health answers NOT_SERVING at once, then
  calls in flight get `grace` seconds to finish.
Services register their handlers on `.server`.

Channels (`aio_channel`, `sync_channel`) get the same message limits, send the token on every call, and
use TLS when $DAPO_TLS_CERT_FILE is set: they verify the server against $DAPO_TLS_CA_FILE (the system roots
without it) and present the same certificate for mutual TLS. Servers with a CA require client
certificates.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from typing import Any, NamedTuple

import grpc
from grpc_health.v1 import health as sync_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from dapo import auth
from dapo.grpc_errors import CodeFor, ErrorInterceptor, SyncErrorInterceptor

log = logging.getLogger(__name__)

METADATA_KEY = "authorization"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
Options = Sequence[tuple[str, Any]]
# The largest message any server or channel of ours sends or receives. The largest one dapo sends is a
# Score request of 10,000 long answers (a weight chunk is 1 MiB, a Generate reply of many long samples
# tens of MiB). A cap, not a buffer: one value everywhere means every client may send what every server
# takes. Tests pass a small `max_message_bytes` to exercise the limit; no service overrides it.
MAX_MESSAGE_BYTES = 512 << 20
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


def message_limits(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """The channel arguments that cap sent and received messages at `max_message_bytes`."""
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _with_limits(options: Options, max_message_bytes: int) -> list[tuple[str, Any]]:
    """The message limits, then `options` (which win where they name the same argument)."""
    return list({**dict(message_limits(max_message_bytes)), **dict(options)}.items())


def _listed(service_names: Sequence[str]) -> tuple[str, ...]:
    return (*service_names, sync_health.SERVICE_NAME, reflection.SERVICE_NAME)


class _Built:
    """What `aio_server` and `sync_server` return alike: register services on `server`, `listen`, `start`."""

    def __init__(self, server: Any, service_names: Sequence[str]) -> None:
        self.server = server
        self.service_names = tuple(service_names)

    def listen(self, address: str) -> int:
        return listen(self.server, address)

    def _statuses(self, is_serving: bool) -> list[tuple[str, Any]]:
        """(name, status) of the server ("") and of each of its services."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if is_serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return [(name, status) for name in ("", *self.service_names)]


class AioServer(_Built):
    """A grpc.aio server built by `aio_server`."""

    def __init__(
        self, server: grpc.aio.Server, health: health_aio.HealthServicer, service_names: Sequence[str]
    ) -> None:
        super().__init__(server, service_names)
        self.server: grpc.aio.Server = server
        self.health = health

    async def start(self) -> None:
        await self.server.start()

    async def set_serving(self, is_serving: bool) -> None:
        """Health of the server ("") and of each of its services."""
        for name, status in self._statuses(is_serving):
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        """Health answers NOT_SERVING from now on; calls in flight get `grace` seconds, then are cancelled."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


class SyncServer(_Built):
    """A thread-pool server built by `sync_server`."""

    def __init__(
        self, server: grpc.Server, health: sync_health.HealthServicer, service_names: Sequence[str]
    ) -> None:
        super().__init__(server, service_names)
        self.server: grpc.Server = server
        self.health = health

    def start(self) -> None:
        self.server.start()

    def set_serving(self, is_serving: bool) -> None:
        """Health of the server ("") and of each of its services."""
        for name, status in self._statuses(is_serving):
            self.health.set(name, status)

    def stop(self, grace: float | None) -> None:
        """Health answers NOT_SERVING from now on; calls in flight get `grace` seconds, then are cancelled.
        Returns once the server has stopped."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def aio_server(
    service_names: Sequence[str],
    *,
    error_codes: CodeFor | None = None,
    health: health_aio.HealthServicer | None = None,
    options: Options = (),
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> AioServer:
    """A grpc.aio server for the services named (full names, e.g. "dapo.v1.Reward"): message limits, the
    token check (when a token is configured), then the error interceptor (`error_codes` adds a service's
    own mapping), the health service (`health`, or a new one) and reflection.
    `options` are further channel arguments."""
    token = auth.service_token()
    interceptors: list[grpc.aio.ServerInterceptor] = [AioTokenInterceptor(token)] if token else []
    interceptors.append(ErrorInterceptor(error_codes))
    server = grpc.aio.server(interceptors=interceptors, options=_with_limits(options, max_message_bytes))
    health = health if health is not None else health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(_listed(service_names), server)
    return AioServer(server, health, service_names)


def sync_server(
    service_names: Sequence[str],
    *,
    max_workers: int,
    error_codes: CodeFor | None = None,
    health: sync_health.HealthServicer | None = None,
    options: Options = (),
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> SyncServer:
    """The same server on a pool of `max_workers` threads, for synchronous code."""
    token = auth.service_token()
    interceptors: list[grpc.ServerInterceptor] = [TokenInterceptor(token)] if token else []
    interceptors.append(SyncErrorInterceptor(error_codes))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        interceptors=interceptors,
        options=_with_limits(options, max_message_bytes),
    )
    health = health if health is not None else sync_health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(_listed(service_names), server)
    return SyncServer(server, health, service_names)


def server_credentials(tls: auth.TlsFiles) -> grpc.ServerCredentials:
    cert, key, ca = tls.read()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


class ListenError(OSError):
    """A server could not bind its address: the port is taken, or the address is not this host's."""


def listen(server: grpc.Server | grpc.aio.Server, address: str) -> int:
    """Bind `address` (TLS when configured); return the port. Raises ListenError if it cannot listen."""
    tls = auth.tls_files()
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, server_credentials(tls))
    except RuntimeError:  # grpc's "Failed to bind" (older releases return 0)
        port = 0
    if port == 0:
        raise ListenError(f"cannot listen on {address}: the port is in use or the address is not this host's")
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


def _channel_options(
    options: Options, tls: auth.TlsFiles | None, max_message_bytes: int
) -> list[tuple[str, Any]]:
    out = _with_limits(options, max_message_bytes)
    if tls is not None and tls.server_name:
        out.append(("grpc.ssl_target_name_override", tls.server_name))
    return out


def aio_channel(
    address: str, options: Options = (), max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.aio.Channel:
    """A grpc.aio channel to `address` with the message limits that sends the service token (and speaks
    TLS when configured). `options` are further channel arguments."""
    token, tls = auth.service_token(), auth.tls_files()
    interceptors = _aio_token_interceptors(token)
    opts = _channel_options(options, tls, max_message_bytes)
    if tls is None:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
    return grpc.aio.secure_channel(address, channel_credentials(tls), options=opts, interceptors=interceptors)


def sync_channel(
    address: str, options: Options = (), max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.Channel:
    """The same channel, blocking."""
    token, tls = auth.service_token(), auth.tls_files()
    opts = _channel_options(options, tls, max_message_bytes)
    if tls is None:
        channel = grpc.insecure_channel(address, options=opts)
    else:
        channel = grpc.secure_channel(address, channel_credentials(tls), options=opts)
    return grpc.intercept_channel(channel, _SyncToken(token)) if token else channel

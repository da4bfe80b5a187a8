"""Checks shared by the authentication tests: call every method of a gRPC service as an outsider would."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def methods(service_descriptor: Any) -> list[tuple[str, bool, bool]]:
    """(full method path, client streaming, server streaming) of every method of a service."""
    return [
        (f"/{service_descriptor.full_name}/{m.name}", m.client_streaming, m.server_streaming)
        for m in service_descriptor.methods
    ]


def call_code(
    channel: grpc.Channel, path: str, client_streaming: bool, server_streaming: bool, metadata: Any = None
) -> grpc.StatusCode:
    """Call `path` with one empty message (raw bytes) and return the status code it ends with."""
    kwargs = {"request_serializer": None, "response_deserializer": None}
    try:
        if client_streaming and server_streaming:
            for _ in channel.stream_stream(path, **kwargs)(iter([b""]), timeout=10, metadata=metadata):
                pass
        elif client_streaming:
            channel.stream_unary(path, **kwargs)(iter([b""]), timeout=10, metadata=metadata)
        elif server_streaming:
            for _ in channel.unary_stream(path, **kwargs)(b"", timeout=10, metadata=metadata):
                pass
        else:
            channel.unary_unary(path, **kwargs)(b"", timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def refused_codes(address: str, paths: list[tuple[str, bool, bool]]) -> dict[str, set[grpc.StatusCode]]:
    """For each method: the codes of a call without a token and of calls with wrong tokens."""
    wrong = [None, [("authorization", "Bearer wrong")], [("authorization", "wrong")], [("x-token", "t")]]
    with grpc.insecure_channel(address) as channel:
        return {p[0]: {call_code(channel, *p, metadata=m) for m in wrong} for p in paths}


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            .status
        )


SERVING = health_pb2.HealthCheckResponse.SERVING

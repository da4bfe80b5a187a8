"""`dapo health http URL` / `dapo health grpc HOST:PORT [--service NAME]`: exit 0 when healthy.

Used by container healthchecks: HTTP is healthy on a 2xx answer, gRPC when the standard
grpc.health.v1 Check answers SERVING.
"""

from __future__ import annotations

import sys


def check_http(url: str, timeout_s: float) -> tuple[bool, str]:
    import httpx

    from dapo import auth

    try:
        reply = httpx.get(url, timeout=timeout_s, verify=auth.http_verify())
    except httpx.HTTPError as exc:
        return False, f"{url}: {exc}"
    return reply.is_success, f"{url}: HTTP {reply.status_code}"


def check_grpc(address: str, service: str, timeout_s: float) -> tuple[bool, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from dapo import rpc

    with rpc.sync_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return False, f"{address}: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{address}: {status}"


def check(kind: str, target: str, service: str = "", timeout_s: float = 5.0) -> int:
    """0 when `target` (a URL for http, host:port for grpc) is healthy, else 1; says which on stdout/stderr."""
    if kind == "http":
        ok, message = check_http(target, timeout_s)
    else:
        ok, message = check_grpc(target, service, timeout_s)
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1

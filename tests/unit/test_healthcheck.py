"""`dapo health` against real gRPC health and HTTP servers on loopback."""

from __future__ import annotations

import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dapo.cli import main as dapo


def dapo_health(argv: list[str]) -> int:
    return dapo(["health", *argv])


def test_grpc_serving_and_not_serving() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert dapo_health(["grpc", f"127.0.0.1:{port}", "--timeout", "2"]) == 1
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert dapo_health(["grpc", f"127.0.0.1:{port}", "--timeout", "2"]) == 0
        assert dapo_health(["grpc", f"127.0.0.1:{port}", "--service", "unknown", "--timeout", "2"]) == 1
    finally:
        server.stop(0)
    assert dapo_health(["grpc", f"127.0.0.1:{port}", "--timeout", "1"]) == 1  # nothing listens any more


def test_http_status_codes() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        assert dapo_health(["http", f"{url}/ok"]) == 0
        assert dapo_health(["http", f"{url}/down"]) == 1
    finally:
        httpd.shutdown()

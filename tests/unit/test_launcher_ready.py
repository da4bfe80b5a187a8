"""`dapo run` waits for the controller's /readyz; when it gives up, it says what the controller last
answered (nothing listening, or why it is not ready) and where its log is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dapo.config import load_config
from dapo.launch.launcher import Launcher
from dapo.local_redis import free_port

TINY = Path(__file__).resolve().parents[2] / "examples/configs/tiny_cpu.yaml"


class NotReady(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"status": "unavailable", "reason": "Connection refused by redis"}'
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_ready_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def launcher_at(url: str, tmp_path: Path) -> Launcher:
    launcher = Launcher(load_config(TINY, []), tmp_path, {})
    launcher.controller_url = url
    return launcher


def test_a_controller_that_is_not_ready_is_reported_with_its_reason(
    not_ready_url: str, tmp_path: Path
) -> None:
    launcher = launcher_at(not_ready_url, tmp_path)
    with pytest.raises(RuntimeError) as caught:
        launcher._wait_ready(1.0, logs="the job folder")
    message = str(caught.value)
    assert f"the controller at {not_ready_url} did not become ready in 1 s" in message
    assert "HTTP 503" in message and "Connection refused by redis" in message
    assert message.endswith("see the job folder")


def test_no_controller_listening_is_reported_as_no_connection(tmp_path: Path) -> None:
    launcher = launcher_at(f"http://127.0.0.1:{free_port()}", tmp_path)
    with pytest.raises(RuntimeError, match=r"last answer: ConnectError: .*; see .*services$"):
        launcher._wait_ready(1.0)

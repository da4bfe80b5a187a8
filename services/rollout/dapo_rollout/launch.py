"""Start a rollout server as a child process and wait until it answers; for tests, benchmarks and tools.

    with RolloutProcess(model_dir, ["--max-model-len", "256"]) as server:
        ... server.address ...

`wait_until` polls `Status` (the server answers it while NOT_SERVING, so a failed start is told apart
from a slow one by the process exiting). `stop` sends SIGTERM and waits for the graceful shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from dapo import rpc
from dapo.v1 import rollout_pb2, rollout_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RolloutProcess:
    def __init__(
        self,
        model_dir: str | Path,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            "-m",
            "dapo_rollout.main",
            "--model",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *extra_args,
        ]
        self.log_path = Path(log_path) if log_path else None
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self) -> RolloutProcess:
        out = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        return self

    def status(self, timeout: float = 5.0) -> rollout_pb2.StatusReply:
        with rpc.sync_channel(self.address) as channel:
            return rollout_pb2_grpc.RolloutStub(channel).Status(rollout_pb2.StatusRequest(), timeout=timeout)

    def wait_until(
        self, predicate: Callable[[rollout_pb2.StatusReply], bool], timeout: float = 300.0
    ) -> rollout_pb2.StatusReply:
        """Poll Status until `predicate` holds; raise if the process exits or `timeout` passes."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rollout server exited with {self.process.returncode}{self._log_tail()}")
            try:
                status = self.status()
                if predicate(status):
                    return status
                last = str(status).replace("\n", " ")
            except grpc.RpcError as exc:
                last = str(exc.code())
            time.sleep(0.5)
        raise TimeoutError(
            f"rollout server not as expected after {timeout} s (last: {last}){self._log_tail()}"
        )

    def wait_ready(self, timeout: float = 300.0) -> rollout_pb2.StatusReply:
        return self.wait_until(lambda s: s.ready, timeout)

    def _log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n" + "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def __enter__(self) -> RolloutProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

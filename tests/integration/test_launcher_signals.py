"""`dapo up` stops every service it started, also when a second SIGTERM (or Ctrl-C) arrives during
the shutdown."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from dapo.local_redis import free_port

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_output(proc: subprocess.Popen[bytes], text: str, timeout_s: float) -> str:
    """Read the process's output (unbuffered, from the pipe itself) until `text` appears."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and text.encode() not in seen:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    if text.encode() not in seen:
        raise AssertionError(f"'{text}' not printed in {timeout_s:.0f} s; output so far:\n{seen.decode()}")
    return seen.decode()


def test_a_second_sigterm_during_shutdown_still_stops_every_service(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # No rollout server (an address nothing listens on): redis, reward, trainer and controller start quickly.
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "dapo.cli", "up", str(ROOT / "examples/configs/tiny_cpu.yaml"),
            f"policy.model_name={tiny_model_dir}", f"services.rollout_addresses=[127.0.0.1:{free_port()}]",
            f"logger.log_dir={tmp_path / 'logs'}", f"checkpointing.checkpoint_dir={tmp_path / 'ckpt'}",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    services: list[psutil.Process] = []
    try:
        _wait_for_output(proc, "Ctrl-C stops everything", timeout_s=180)
        services = psutil.Process(proc.pid).children(recursive=True)
        assert len(services) >= 4, services  # redis, reward, trainer, controller (and their children)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the launcher is now stopping the controller, waiting for it to exit
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 130
        _, alive = psutil.wait_procs(services, timeout=30)
        assert alive == [], f"left running after the launcher exited: {alive}"
    finally:  # whatever a failure left behind
        if proc.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess):
                services += psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            proc.wait(30)
        for process in services:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()

"""The launcher's ServiceProcess: niceness, exit codes and stopping a process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from dapo.launch.service_process import ServiceProcess

REPORT_NICENESS = "import os, sys; print(os.nice(0), flush=True); sys.exit(3)"


def wait_exit(service: ServiceProcess, timeout_s: float = 10.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (code := service.exit_code()) is None:
        assert time.monotonic() < deadline, "the service did not exit"
        time.sleep(0.05)
    return code


@pytest.mark.parametrize("nice", [0, 5])
def test_the_child_runs_at_the_requested_niceness(tmp_path: Path, nice: int) -> None:
    service = ServiceProcess(
        "probe", [sys.executable, "-c", REPORT_NICENESS], tmp_path / "probe.log", nice=nice
    )
    service.start()
    assert wait_exit(service) == 3  # the command's own exit code, not nice's
    assert int(service.log_path.read_text().split()[0]) == os.nice(0) + nice


def test_stop_ends_a_running_child(tmp_path: Path) -> None:
    service = ServiceProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", nice=3
    )
    service.start()
    assert service.exit_code() is None
    service.stop(grace_s=5)
    assert service.exit_code() is not None

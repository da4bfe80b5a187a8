"""The launcher's list of supervised services, shared between supervise() and a thread that kills
services (an operator's tool, the fault tests): a service killed without restart is never restarted,
one killed with restart is restarted once, and the process signalled is the one that was running."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from dapo.config import load_config
from dapo.launch.launcher import Launcher
from dapo.launch.service_process import ServiceProcess

NUM_TARGETS = 30


def sleeper(name: str, tmp_path: Path) -> ServiceProcess:
    return ServiceProcess(name, ["sleep", "120"], tmp_path / f"{name}.log", max_restarts=1)


def test_kill_is_atomic_with_a_concurrent_supervisor(tmp_path: Path) -> None:
    launcher = Launcher(load_config(None, []), tmp_path, {})
    # Services that exit at once keep the supervisor restarting (and iterating) all the time.
    churn = [
        ServiceProcess(f"churn-{i}", ["true"], tmp_path / "churn.log", max_restarts=10**9) for i in range(3)
    ]
    targets = [sleeper(f"target-{i}", tmp_path) for i in range(NUM_TARGETS)]
    kept = sleeper("kept", tmp_path)
    launcher.services.extend([*churn, *targets, kept])
    for service in launcher.services:
        service.start()
    errors: list[BaseException] = []
    done = threading.Event()

    def supervise() -> None:
        try:
            while not done.is_set():
                launcher.supervise()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    try:
        killed = []
        for target in targets:
            running = target.process
            signalled = launcher.kill(target.name, restart=False)
            assert signalled is running
            killed.append(signalled)
        restarted_from = kept.process
        assert launcher.kill("kept") is restarted_from  # SIGKILL, supervised: restarted
        deadline = time.monotonic() + 10
        while kept.process is restarted_from and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # time for a wrong restart of a dropped target to happen
    finally:
        done.set()
        supervisor.join(10)
        launcher.stop()
    assert not supervisor.is_alive()
    assert errors == []
    assert all(c.restarts > 0 for c in churn)  # the supervisor did run all along
    assert [t.restarts for t in targets] == [0] * NUM_TARGETS  # none came back
    assert [t.process for t in targets] == killed
    assert [p.wait(10) for p in killed] == [-signal.SIGKILL] * NUM_TARGETS
    assert [s.name for s in launcher.services] == [*(c.name for c in churn), "kept"]
    assert kept.restarts == 1 and kept.process is not restarted_from
    assert restarted_from.wait(10) == -signal.SIGKILL


class SlowToCheck(ServiceProcess):
    """A service whose liveness check takes a while: supervise() is inside its pass meanwhile."""

    checking: threading.Event

    def exit_code(self) -> int | None:
        self.checking.set()
        time.sleep(0.3)
        return super().exit_code()


def test_a_service_dropped_while_the_supervisor_checks_it_stays_down(tmp_path: Path) -> None:
    launcher = Launcher(load_config(None, []), tmp_path, {})
    target = SlowToCheck("rollout-1", ["sleep", "120"], tmp_path / "r.log", max_restarts=1)
    target.checking = threading.Event()
    launcher.services.append(target)
    target.start()
    supervisor = threading.Thread(target=launcher.supervise)
    supervisor.start()
    try:
        assert target.checking.wait(10)
        signalled = launcher.kill("rollout-1", restart=False)  # while supervise() looks at it
        supervisor.join(10)
        launcher.supervise()
    finally:
        launcher.stop()
        target.stop()
    assert signalled.wait(10) == -signal.SIGKILL
    assert (target.restarts, target.process) == (0, signalled)
    assert launcher.services == []


def test_kill_names_the_services_there_are(tmp_path: Path) -> None:
    launcher = Launcher(load_config(None, []), tmp_path, {})
    launcher.services.append(ServiceProcess("reward", [sys.executable, "-c", ""], tmp_path / "r.log"))
    with pytest.raises(KeyError, match="no service 'rollout-7'; running: reward"):
        launcher.kill("rollout-7")
    with pytest.raises(RuntimeError, match="service reward was never started"):
        launcher.kill("reward")

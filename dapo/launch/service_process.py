"""One service process of a local launch: started in its own session, restarted when it dies (up to a
budget), stopped with a grace period; optionally niced and pinned to a CPU set."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from dapo.launch.cpu_sets import cpu_list


@dataclass
class ServiceProcess:
    """One service process, restarted up to `max_restarts` times when it dies."""

    name: str
    cmd: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    max_restarts: int = 3
    nice: int = 0
    """Added to the process's scheduling niceness (0: unchanged); children inherit it."""
    cpus: frozenset[int] | None = None
    """CPUs the process (and its children) may run on; None: unchanged."""
    restarts: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        cmd = self.cmd
        if self.cpus is not None:
            # taskset sets the affinity and then execs: every thread and process of the service inherits it.
            cmd = ["taskset", "--cpu-list", cpu_list(self.cpus), *cmd]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        self.process = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the children in order
        )
        log.close()

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace_s)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, num_lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])
        except OSError:
            return ""

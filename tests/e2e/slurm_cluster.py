"""A real Slurm cluster on this machine for the tests: munged, slurmctld and slurmd daemons of its own.

`SlurmCluster(folder, nodes=2).start()` writes `slurm.conf` under `folder` (state, spool, logs and pid
files there too), starts a private munged (its own socket, the package's key), slurmctld, and one slurmd
per simulated node (`-N n1`, `-N n2`: Debian's Slurm is built with MULTIPLE_SLURMD); every node has the
machine's own CPUs and NodeAddr 127.0.0.1, so a job must connect by address, never by node name.
`stop()` stops every daemon it started, by pid, and leaves nothing running. `why_not()` says why Slurm
cannot run here (missing binaries, not root), or None.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo")
MUNGE_KEY = Path("/etc/munge/munge.key")
CTLD_PORT = 6817
SLURMD_PORT = 17001


def why_not() -> str | None:
    """The reason Slurm cannot run on this machine, or None."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"needs {', '.join(missing)} (scripts/install-slurm.sh installs slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY}"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (the munge package creates it)"
    return None


def _port_free(port: int) -> bool:
    """Nobody listens on `port` (connections of a stopped daemon in TIME_WAIT do not count: the
    daemons bind with SO_REUSEADDR too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class SlurmCluster:
    folder: Path
    nodes: int = 2
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory_mb: int = 8000
    pids: list[tuple[str, int]] = field(default_factory=list)
    munge_dir: Path | None = None

    @property
    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.nodes)]

    @property
    def env(self) -> dict[str, str]:
        """What the Slurm commands (sbatch, squeue, ...) need to reach this cluster."""
        return {"SLURM_CONF": str(self.folder / "slurm.conf")}

    def start(self, timeout_s: float = 30.0) -> SlurmCluster:
        busy = [p for p in (CTLD_PORT, *range(SLURMD_PORT, SLURMD_PORT + self.nodes)) if not _port_free(p)]
        if busy:
            raise RuntimeError(f"ports {busy} are taken: another Slurm runs here")
        self.folder.mkdir(parents=True, exist_ok=True)
        # munged runs as `munge` and wants every folder above its socket searchable by all: a folder
        # of its own under /tmp (a test's tmp_path is private to root).
        munge = Path(tempfile.mkdtemp(prefix="dapo-munge-"))
        self.munge_dir = munge
        account = pwd.getpwnam("munge")
        os.chown(munge, account.pw_uid, account.pw_gid)
        munge.chmod(0o755)
        self.munge_socket = munge / "munge.socket"
        subprocess.run(
            [
                "su", "-s", "/bin/sh", "munge", "-c",
                f"/usr/sbin/munged --socket={self.munge_socket} --key-file={MUNGE_KEY} "
                f"--pid-file={munge / 'munged.pid'} --log-file={munge / 'munged.log'} "
                f"--seed-file={munge / 'munged.seed'}",
            ],
            check=True,
            timeout=30,
        )  # fmt: skip
        self.pids.append(("munged", self._read_pid(munge / "munged.pid", timeout_s)))
        self._write_conf()
        env = {**os.environ, **self.env}
        subprocess.run(["slurmctld"], check=True, env=env, timeout=30)
        self.pids.append(("slurmctld", self._read_pid(self.folder / "slurmctld.pid", timeout_s)))
        for name in self.node_names:
            subprocess.run(["slurmd", "-N", name], check=True, env=env, timeout=30)
            self.pids.append(
                (f"slurmd {name}", self._read_pid(self.folder / f"slurmd-{name}.pid", timeout_s))
            )
        self._wait_idle(timeout_s)
        return self

    def _write_conf(self) -> None:
        f = self.folder
        for sub in ("state", "spool"):
            (f / sub).mkdir(exist_ok=True)
        host = socket.gethostname().split(".")[0]
        lines = [
            "ClusterName=dapotest",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={CTLD_PORT}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "EnforcePartLimits=ALL",
            "SlurmdTimeout=60",
            "KillWait=10",
            "MailProg=/bin/true",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool' / '%n'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={f / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'slurmd-%n.log'}",
        ]
        for i, name in enumerate(self.node_names):
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={SLURMD_PORT + i} "
                f"CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
            )
        lines.append(
            f"PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP"
        )
        (f / "slurm.conf").write_text("\n".join(lines) + "\n")

    def _read_pid(self, path: Path, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                return int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                time.sleep(0.1)
        raise RuntimeError(f"no pid file {path} within {timeout_s} s; logs in {self.folder}")

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            reply = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%N %t"],
                capture_output=True,
                text=True,
                env={**os.environ, **self.env},
            )
            state = reply.stdout + reply.stderr
            rows = dict(line.split() for line in reply.stdout.splitlines() if len(line.split()) == 2)
            if sorted(rows) == self.node_names and all(v == "idle" for v in rows.values()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the nodes are not idle within {timeout_s} s: {state!r}; logs in {self.folder}")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop every daemon started, newest first (SIGTERM, then SIGKILL after `grace_s`)."""
        for _name, pid in reversed(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False

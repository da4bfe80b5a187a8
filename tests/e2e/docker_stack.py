"""A Docker engine and one compose project for the deployment tests: start dockerd if none runs (and
stop it again), make the base images available (pulled, or the Debian stand-ins of
scripts/offline-images.sh where no registry answers), and drive `docker compose` with this project's
files, a private project name and ports picked free on 127.0.0.1."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from dapo.local_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
CPU_FILES = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(ROOT / "docker-compose.cpu.yml")]
PUBLIC_BASE_IMAGES = ("python:3.11-slim", "redis:7.2", "prom/prometheus:v2.53.0")


class DockerUnavailable(Exception):
    """No Docker engine can run here (the reason says why)."""


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def engine_answers() -> bool:
    return shutil.which("docker") is not None and _run(["docker", "info"], 30).returncode == 0


class DockerEngine:
    """The machine's engine, or a dockerd started here (as root) and stopped by `close`."""

    def __init__(self, log_dir: Path) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        if engine_answers():
            return
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            raise DockerUnavailable("no docker client or dockerd on PATH (scripts/install-docker.sh)")
        if os.geteuid() != 0:
            raise DockerUnavailable("no Docker engine runs and only root may start dockerd")
        log = open(log_dir / "dockerd.log", "wb")  # noqa: SIM115 - owned by the daemon
        self.process = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not engine_answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                tail = (log_dir / "dockerd.log").read_text(errors="replace")[-2000:]
                raise DockerUnavailable(f"dockerd did not start: {tail}")
            time.sleep(1)
        if _run(["docker", "compose", "version"], 30).returncode != 0:
            self.close()
            raise DockerUnavailable("the docker compose plugin is missing (scripts/install-docker.sh)")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def image_env() -> dict[str, str]:
    """Compose variables that point at usable base images: {} when the public ones are here or can be
    pulled, else the exports of scripts/offline-images.sh (which builds the Debian stand-ins)."""
    missing = [i for i in PUBLIC_BASE_IMAGES if _run(["docker", "image", "inspect", i], 30).returncode]
    if all(_run(["docker", "pull", i], 600).returncode == 0 for i in missing):
        return {}
    made = _run(["bash", str(ROOT / "scripts/offline-images.sh")], 1200)
    if made.returncode != 0:
        raise RuntimeError(f"scripts/offline-images.sh failed:\n{made.stderr[-3000:]}")
    env = {}
    for line in made.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value
    return env


class ComposeStack:
    """`docker compose` on the CPU files under a private project name; `down` removes everything it made
    (containers, networks, volumes), keeping the images as the layer cache."""

    def __init__(self, extra_env: dict[str, str], log_dir: Path) -> None:
        self.project = f"dapo-test-{os.getpid()}"
        self.controller_port = free_port()
        self.prometheus_port = free_port()
        self.log_dir = log_dir
        # Every secret set, as a deployment must: the service token, Redis's password, the REST token.
        self.api_token = secrets.token_hex(16)
        self.env = {
            **os.environ,
            **extra_env,
            "DAPO_SERVICE_TOKEN": secrets.token_hex(16),
            "DAPO_REDIS_PASSWORD": secrets.token_hex(16),
            "DAPO_API_TOKEN": self.api_token,
            "COMPOSE_BAKE": "false",
            "DAPO_CONTROLLER_PORT": str(self.controller_port),
            "DAPO_PROMETHEUS_PORT": str(self.prometheus_port),
        }
        self.url = f"http://127.0.0.1:{self.controller_port}"

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "-p", self.project, *CPU_FILES, "--profile", "monitoring", *args]
        result = _run(cmd, timeout, self.env)
        with open(self.log_dir / "compose.log", "a") as log:
            log.write(f"$ {' '.join(cmd)}\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def up(self) -> None:
        """Every core service and Prometheus, and Grafana where its image is here or can be pulled
        (Debian has no Grafana to make a stand-in from); returns once all are healthy."""
        services = ["redis", "reward", "rollout", "trainer", "controller", "prometheus"]
        grafana = self.env.get("DAPO_GRAFANA_IMAGE", "grafana/grafana:11.1.0")
        if _run(["docker", "image", "inspect", grafana], 30).returncode == 0 or (
            _run(["docker", "pull", grafana], 600).returncode == 0
        ):
            services.append("grafana")
        self.compose("up", "-d", "--wait", "--wait-timeout", "600", *services, timeout=900)

    def container_pid(self, service: str) -> int:
        cid = self.compose("ps", "-q", service).stdout.strip()
        state = json.loads(_run(["docker", "inspect", cid], 30).stdout)[0]["State"]
        return int(state["Pid"])

    def restart_count(self, service: str) -> int:
        cid = self.compose("ps", "-q", service).stdout.strip()
        return int(json.loads(_run(["docker", "inspect", cid], 30).stdout)[0]["RestartCount"])

    def python(self, service: str, code: str) -> Any:
        """Run `code` with the service image's Python (it prints one JSON value) and return the value."""
        out = self.compose("exec", "-T", service, "python3", "-c", code, timeout=120).stdout
        return json.loads(out.strip().splitlines()[-1])

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", timeout=120, check=False).stdout

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300, check=False)

"""Secrets stay secret: a Redis password in a run config is hidden in `dapo config` and in the run record,
the controller authenticates to a Redis that requires a password, and a service bound beyond loopback
without a token warns naming the setting."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import httpx
import pytest
import redis
from dapo_controller.settings import ControllerSettings

from dapo import auth, rpc
from dapo.local_redis import RedisServer
from tests.integration.controller_server import running_controller

PASSWORD = "hunter2-redis-password"
SMALL = {
    "policy": {"train_global_batch_size": 16, "train_micro_batch_size": 4},
    "grpo": {"num_prompts_per_step": 4, "num_generations_per_prompt": 4},
    "services": {"redis_url": f"redis://:{PASSWORD}@redis.example:6379/0"},
}


def test_dapo_config_hides_the_redis_password() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dapo.cli", "config", "examples/configs/tiny_cpu.yaml",
         f"services.redis_url=rediss://user:{PASSWORD}@redis.example:6380/0"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert PASSWORD not in out.stdout + out.stderr
    assert json.loads(out.stdout)["services"]["redis_url"] == "rediss://user:***@redis.example:6380/0"


def test_the_run_record_never_holds_the_redis_password(monkeypatch: pytest.MonkeyPatch) -> None:
    server = RedisServer(password=PASSWORD)
    try:
        monkeypatch.setenv(auth.REDIS_PASSWORD, PASSWORD)
        plain_url = f"redis://127.0.0.1:{server.port}/0"  # the password comes from the environment
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(plain_url).ping()
        settings = ControllerSettings(redis_url=plain_url, run_loop=False)
        assert PASSWORD not in repr(settings)
        with running_controller(settings) as url:
            assert httpx.get(f"{url}/readyz").status_code == 200  # it authenticated
            created = httpx.post(f"{url}/v1/runs", json={"config": SMALL})
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            replies = [
                created.text,
                httpx.get(f"{url}/v1/runs/{run_id}").text,
                httpx.get(f"{url}/v1/runs").text,
                httpx.post(f"{url}/v1/runs/{run_id}/stop").text,
                httpx.get(f"{url}/v1/runs/{run_id}/events", timeout=30).text,  # ends: the run is stopped
            ]
        for text in replies:
            assert PASSWORD not in text
        assert created.json()["config"]["services"]["redis_url"] == "redis://:***@redis.example:6379/0"
        stored = redis.Redis.from_url(server.url)
        dump = b"".join(stored.dump(key) or b"" for key in stored.keys("*"))
        assert PASSWORD.encode() not in dump
    finally:
        server.stop()


def test_binding_beyond_loopback_without_a_token_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(auth.SERVICE_TOKEN, raising=False)
    for host, token, warns in (("127.0.0.1", None, False), ("0.0.0.0", None, True), ("0.0.0.0", "t", False)):
        if token:
            monkeypatch.setenv(auth.SERVICE_TOKEN, token)
        caplog.clear()
        server = rpc.sync_server([], max_workers=1)
        with caplog.at_level(logging.WARNING, logger="dapo"):
            server.listen(f"{host}:0")
        server.stop(None)
        warned = [r.getMessage() for r in caplog.records if auth.SERVICE_TOKEN in r.getMessage()]
        assert bool(warned) == warns, (host, token, warned)
        if warns:
            assert f"the gRPC server on {host}:0 binds {host}" in warned[0]

"""A whole run through the launcher with every protection on: a service token (made by the launcher),
TLS with a CA and a certificate made here (gRPC mutual TLS, HTTPS REST), a password on the private Redis.
It completes; every service listens on 127.0.0.1 only; outsiders are refused; and neither the token nor
the password appears in the run record, its events, the written outputs or any service's log."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import psutil
import pytest
import redis

from dapo import auth, rpc
from dapo.config import load_config
from dapo.launch.launcher import Launcher
from dapo.v1 import rollout_pb2, rollout_pb2_grpc
from tests.certs import make_certs

pytestmark = pytest.mark.slow

NUM_STEPS = 2
PASSWORD = "redis-password-for-the-e2e-test"


def overrides(model: Path, work: Path) -> list[str]:
    values = {
        "policy.model_name": model,
        "policy.max_total_sequence_length": 64,
        "policy.train_global_batch_size": 8,
        "policy.train_micro_batch_size": 8,
        "policy.precision": "float32",
        "policy.generation.max_new_tokens": 4,
        "grpo.num_prompts_per_step": 2,
        "grpo.num_generations_per_prompt": 4,
        "grpo.max_num_steps": NUM_STEPS,
        "grpo.use_dynamic_sampling": False,  # the untrained model is always wrong
        "grpo.val_at_start": False,
        "checkpointing.enabled": False,
        "logger.log_dir": work / "logs",
        "logger.tensorboard_enabled": False,
        "data.train_file": model / "data/train.jsonl",
        "data.validation_file": "null",
        "env.math.workers": 1,
        "env.math.timeout": 2,
    }
    return [f"{k}={v}" for k, v in values.items()]


def listening(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket of these processes and their children."""
    procs = []
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            procs += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:  # a service that is restarting
            continue
    found = set()
    for proc in procs:
        try:
            found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections("tcp") if c.status == "LISTEN"}
        except psutil.NoSuchProcess:
            continue
    return found


def test_a_run_with_token_tls_and_redis_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dapo.tiny.model import build_untrained_model
    from dapo.tiny.task import write_task_data

    model = tmp_path / "model"
    build_untrained_model(model, seed=0)
    write_task_data(model / "data", seed=0, num_test=20)
    for name, value in make_certs(tmp_path / "tls").env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(auth.REDIS_PASSWORD, PASSWORD)
    for name in (auth.SERVICE_TOKEN, f"{auth.SERVICE_TOKEN}_FILE", "REDIS_URL", auth.API_TOKEN):
        monkeypatch.delenv(name, raising=False)
    config = load_config(None, overrides(model, tmp_path))
    launcher = Launcher(config, tmp_path / "launch", config.model_dump(mode="json"))
    token = launcher.service_token
    assert len(token) >= 32
    try:
        launcher.start()
        assert launcher.controller_url.startswith("https://127.0.0.1:")
        assert launcher.redis_server is not None
        pids = [s.process.pid for s in launcher.services if s.process is not None]
        pids.append(launcher.redis_server.process.pid)
        sockets: set[tuple[str, int]] = set()
        done = threading.Event()

        def watch() -> None:  # the trainer's publisher listens only while it serves the run
            while not done.wait(0.5):
                sockets.update(listening(pids))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        launcher.submit()
        try:
            run = launcher.follow()
        finally:
            done.set()
            watcher.join(10)
        assert run["status"] == "succeeded", run
        assert run["policy_version"] == NUM_STEPS  # every batch applied
        assert all(auth.is_loopback(ip) for ip, _ in sockets), sockets
        addresses = [launcher.reward_address, launcher.weights_address, *launcher.rollout_addresses]
        expected = {int(a.rsplit(":", 1)[1]) for a in addresses} | {launcher.controller_port}
        assert expected | {launcher.redis_server.port} <= {port for _, port in sockets}

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=launcher.redis_server.port).ping()
        rollout = launcher.rollout_addresses[0]
        tls = auth.tls_files()
        assert tls is not None
        outsiders = {  # TLS with the deployment's certificate but no token; no TLS at all
            grpc.StatusCode.UNAUTHENTICATED: grpc.secure_channel(rollout, rpc.channel_credentials(tls)),
            grpc.StatusCode.UNAVAILABLE: grpc.insecure_channel(rollout),
        }
        for code, channel in outsiders.items():
            with channel, pytest.raises(grpc.RpcError) as refused:
                rollout_pb2_grpc.RolloutStub(channel).Status(rollout_pb2.StatusRequest(), timeout=10)
            assert refused.value.code() == code

        url = f"{launcher.controller_url}/v1/runs/{launcher.run_id}"
        shown = [launcher.http.get(url).text, launcher.http.get(f"{url}/metrics").text]
        shown.append(launcher.http.get(f"{url}/events", timeout=30).text)  # the run ended: the stream ends
        assert '"succeeded"' in shown[0] and "event: event" in shown[2]
        client = redis.Redis.from_url(launcher.redis_url or "")
        shown += [
            json.dumps([str(v) for v in client.hgetall(k).values()])
            for k in client.keys("*")
            if client.type(k) == b"hash"
        ]
        out = launcher.write_outputs(run)
    finally:
        launcher.stop()
    written = [p for p in [*(tmp_path / "launch").rglob("*"), *out.rglob("*")] if p.is_file()]
    assert any(p.name == "trainer.log" for p in written) and any(p.name == "config.yaml" for p in written)
    texts = [*shown, *(p.read_text(errors="replace") for p in written if p.suffix != ".png")]
    for secret in (token, PASSWORD):
        assert not [t[:200] for t in texts if secret in t]

"""Fault injection on the whole system, launched as local processes (the launcher, real services):
SIGKILL the controller, one of two rollout servers, and the trainer mid-run, and restart the reward
service; the run completes with no batch lost or applied twice, and its events record what happened.
A trainer that does not come back fails the run with the reason."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from dapo_controller.launcher import Launcher

from dapo import keys
from dapo.config import load_config

pytestmark = pytest.mark.slow

NUM_STEPS = 8


@pytest.fixture(scope="module")
def model_with_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dapo.tiny.model import build_untrained_model
    from dapo.tiny.task import write_task_data

    out = tmp_path_factory.mktemp("tiny-faults")
    build_untrained_model(out, seed=0)
    write_task_data(out / "data", seed=0, num_test=50)
    return out


def small_config(model: Path, work: Path, **extra: Any) -> list[str]:
    overrides = {
        "policy.model_name": str(model),
        "policy.max_total_sequence_length": 64,
        "policy.train_global_batch_size": 16,
        "policy.train_micro_batch_size": 16,
        "policy.precision": "float32",
        "policy.optimizer.lr": 1e-4,
        "policy.generation.max_new_tokens": 4,
        "grpo.num_prompts_per_step": 4,
        "grpo.num_generations_per_prompt": 4,
        "grpo.max_num_steps": NUM_STEPS,
        "grpo.use_dynamic_sampling": False,  # the untrained model is always wrong
        "grpo.val_at_start": False,
        "checkpointing.checkpoint_dir": str(work / "ckpt"),
        "checkpointing.save_period": 1,
        "logger.log_dir": str(work / "logs"),
        "logger.tensorboard_enabled": False,
        "data.train_file": str(model / "data/train.jsonl"),
        "data.validation_file": None,
        "env.math.workers": 1,
        "env.math.timeout": 2,
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in overrides.items()]


def launch(overrides: list[str], work: Path) -> Launcher:
    config = load_config(None, overrides)
    launcher = Launcher(config, work / "launch", config.model_dump(mode="json"))
    launcher.start()
    return launcher


def run_status(launcher: Launcher) -> dict[str, Any]:
    return httpx.get(f"{launcher.controller_url}/v1/runs/{launcher.run_id}", timeout=10).json()


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def trainer_steps(launcher: Launcher) -> int:
    client = redis.Redis.from_url(launcher.redis_url)
    try:
        raw = client.get(keys.policy_version(launcher.run_id))
        return int(raw) if raw is not None else 0
    finally:
        client.close()


def service(launcher: Launcher, name: str) -> Any:
    return next(s for s in launcher.services if s.name == name)


def events(launcher: Launcher) -> list[dict[str, Any]]:
    import json

    client = redis.Redis.from_url(launcher.redis_url)
    try:
        return [json.loads(f[b"data"]) for _, f in client.xrange(keys.events_stream(launcher.run_id))]
    finally:
        client.close()


@pytest.fixture
def stopped_afterwards() -> Iterator[list[Launcher]]:
    launchers: list[Launcher] = []
    yield launchers
    for launcher in launchers:
        launcher.stop()


def test_run_survives_killed_controller_rollout_trainer_and_reward_restart(
    model_with_data: Path, tmp_path: Path, stopped_afterwards: list[Launcher]
) -> None:
    launcher = launch(small_config(model_with_data, tmp_path, **{"cluster.num_rollout_servers": 2}), tmp_path)
    stopped_afterwards.append(launcher)
    launcher.submit()

    def inject() -> None:
        # Each fault once the trainer has applied a further batch; the launcher restarts what died.
        faults = [("trainer", 2), ("controller", 3), ("rollout-1", 4), ("reward", 5)]
        for name, after_step in faults:
            wait_for(lambda s=after_step: trainer_steps(launcher) >= s, 300, f"step {after_step}")
            process = service(launcher, name).process
            if name == "reward":
                process.send_signal(signal.SIGTERM)  # a restart, as an operator would do it
            else:
                os.killpg(process.pid, signal.SIGKILL)
            if name == "rollout-1":
                launcher.services.remove(service(launcher, name))  # it stays dead: the run must go on
            time.sleep(1)

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    run = launcher.follow()
    injector.join(10)
    assert run["status"] == "succeeded", run
    client = redis.Redis.from_url(launcher.redis_url)
    try:
        applied = {m.decode() for m in client.smembers(keys.applied_batches(launcher.run_id))}
        stream_ids = [f[b"batch_id"].decode() for _, f in client.xrange(keys.batch_stream(launcher.run_id))]
        pending = client.xpending(keys.batch_stream(launcher.run_id), keys.TRAINER_GROUP)["pending"]
    finally:
        client.close()
    expected = {f"{launcher.run_id}-step{s}" for s in range(NUM_STEPS)}
    assert applied == expected  # nothing lost
    assert sorted(stream_ids) == sorted(expected)  # no batch queued twice
    assert pending == 0
    assert trainer_steps(launcher) == NUM_STEPS  # one version per batch: none applied twice
    kinds = [e["kind"] for e in events(launcher)]
    assert "service_restart" in kinds and "resumed" in kinds and "rollout_lost" in kinds
    trainer_records = [r for r in launcher.records if r.get("source") == "trainer"]
    assert sorted({r["version"] for r in trainer_records}) == list(range(1, NUM_STEPS + 1))
    # The finished run replays over Server-Sent Events: its metrics, events and final status.
    kinds_seen: list[str] = []
    with httpx.stream(
        "GET", f"{launcher.controller_url}/v1/runs/{launcher.run_id}/events", timeout=30
    ) as reply:
        for line in reply.iter_lines():
            if line.startswith("event:"):
                kinds_seen.append(line.split(":", 1)[1].strip())
    assert kinds_seen.count("metrics") >= 2 * NUM_STEPS and "status" in kinds_seen


def test_stop_then_a_trainer_that_does_not_come_back_fails_the_next_run(
    model_with_data: Path, tmp_path: Path, stopped_afterwards: list[Launcher]
) -> None:
    overrides = small_config(
        model_with_data, tmp_path, **{"services.trainer_restart_timeout_s": 15, "grpo.max_num_steps": 50}
    )
    launcher = launch(overrides, tmp_path)
    stopped_afterwards.append(launcher)
    first = launcher.submit()
    wait_for(lambda: trainer_steps(launcher) >= 1, 300, "the first step")
    launcher.request_stop()
    wait_for(lambda: run_status(launcher)["status"] != "running", 60, "the run to stop")
    assert run_status(launcher)["status"] == "stopped"

    second = launcher.submit()  # the same services take the next run
    assert second != first
    wait_for(lambda: trainer_steps(launcher) >= 1, 300, "the first step of the second run")
    trainer = service(launcher, "trainer")
    launcher.services.remove(trainer)  # not restarted
    os.killpg(trainer.process.pid, signal.SIGKILL)
    wait_for(lambda: run_status(launcher)["status"] in ("failed", "succeeded"), 120, "the run to end")
    run = run_status(launcher)
    assert run["status"] == "failed"
    assert "trainer sent no heartbeat" in run["error"] and "did not come back" in run["error"]
    assert any(e["kind"] == "trainer_lost" for e in events(launcher))

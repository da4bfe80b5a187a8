"""Fault injection on the whole system, launched as local processes (the launcher, real services):
SIGKILL the controller, one of two rollout servers, and the trainer mid-run, and restart the reward
service; the run completes with no batch lost or applied twice, and its events record what happened.
A trainer that does not come back fails the run with the reason."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from dapo import keys
from dapo.config import load_config
from dapo.launch.launcher import Launcher

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


def events(launcher: Launcher) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(launcher.redis_url)
    try:
        return [json.loads(f[b"data"]) for _, f in client.xrange(keys.events_stream(launcher.run_id))]
    finally:
        client.close()


def wait_for_event(
    launcher: Launcher, predicate: Callable[[dict[str, Any]], bool], what: str, timeout_s: float = 120
) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def seen() -> bool:
        found[:] = [e for e in events(launcher) if predicate(e)]
        return bool(found)

    wait_for(seen, timeout_s, what)
    return found[0]


def heartbeat_pid(launcher: Launcher) -> int | None:
    client = redis.Redis.from_url(launcher.redis_url)
    try:
        raw = client.get(keys.trainer_heartbeat())
        return int(json.loads(raw)["pid"]) if raw is not None else None
    finally:
        client.close()


class Injector(threading.Thread):
    """Runs `inject` beside the launcher's own loop; `check()` joins it and re-raises its error."""

    def __init__(self, inject: Callable[[], None]) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.inject = inject
        self.error: BaseException | None = None
        self.done: list[str] = []

    def run(self) -> None:
        try:
            self.inject()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by check()
            self.error = exc

    def check(self, timeout_s: float) -> None:
        self.join(timeout_s)
        assert not self.is_alive(), f"the fault injector was still running; faults done: {self.done}"
        if self.error is not None:
            raise AssertionError(f"the fault injector failed after {self.done}") from self.error


# (service, the trainer's version to wait for, signal, whether the launcher restarts it)
FAULTS = [
    ("trainer", 2, signal.SIGKILL, True),
    ("controller", 3, signal.SIGKILL, True),
    ("rollout-1", 4, signal.SIGKILL, False),  # it stays dead: the run must go on with rollout-0
    ("reward", 5, signal.SIGTERM, True),  # a restart, as an operator would do it
]


def inject_and_confirm(launcher: Launcher, done: list[str]) -> None:
    """Each fault once the trainer has applied a further batch, then evidence that it happened."""
    for name, after_step, sig, restarted in FAULTS:
        wait_for(lambda s=after_step: trainer_steps(launcher) >= s, 300, f"step {after_step}")
        killed = launcher.kill(name, sig, restart=restarted)
        code = killed.wait(60)  # the process we signalled is gone
        assert code == (0 if sig == signal.SIGTERM else -sig), (name, code)
        if restarted:
            wait_for_event(
                launcher,
                lambda e, n=name, c=code: (
                    e["kind"] == "service_restart"
                    and e["message"].startswith(f"{n} exited with code {c}; restarting")
                ),
                f"the restart event of {name}",
            )
            replacement = launcher.service(name).process
            assert replacement is not None and replacement.pid != killed.pid
            assert replacement.poll() is None, f"the restarted {name} exited with {replacement.poll()}"
        if name == "trainer":  # the new trainer is the one serving the run
            wait_for(
                lambda p=replacement.pid: heartbeat_pid(launcher) == p, 120, "the new trainer's heartbeat"
            )
        if name == "controller":
            wait_for_event(launcher, lambda e: e["kind"] == "resumed", "the controller to resume the run")
        if name == "rollout-1":
            with pytest.raises(KeyError):
                launcher.service(name)  # no longer supervised
            address = launcher.rollout_addresses[1]
            wait_for_event(
                launcher,
                lambda e, a=address: e["kind"] == "rollout_lost" and e.get("address") == a,
                f"the controller to drop {address}",
            )
        done.append(name)


@pytest.fixture
def stopped_afterwards() -> Iterator[list[Launcher]]:
    launchers: list[Launcher] = []
    yield launchers
    for launcher in launchers:
        launcher.stop()


def final_ledger(checkpoint_dir: Path, run_id: str) -> list[dict[str, Any]]:
    from dapo_trainer.checkpoint import STATE_FILE, checkpoint_root, complete_checkpoints

    _, newest = complete_checkpoints(checkpoint_root(str(checkpoint_dir), run_id))[-1]
    return list(json.loads((newest / STATE_FILE).read_text())["ledger"])


def test_run_survives_killed_controller_rollout_trainer_and_reward_restart(
    model_with_data: Path, tmp_path: Path, stopped_afterwards: list[Launcher]
) -> None:
    launcher = launch(small_config(model_with_data, tmp_path, **{"cluster.num_rollout_servers": 2}), tmp_path)
    stopped_afterwards.append(launcher)
    launcher.submit()
    injector = Injector(lambda: inject_and_confirm(launcher, injector.done))
    injector.start()
    run = launcher.follow()
    injector.check(timeout_s=60)
    assert injector.done == [name for name, *_ in FAULTS]
    assert run["status"] == "succeeded", run
    client = redis.Redis.from_url(launcher.redis_url)
    try:
        applied = {m.decode() for m in client.smembers(keys.applied_batches(launcher.run_id))}
        stream = client.xinfo_stream(keys.batch_stream(launcher.run_id))
        pending = client.xpending(keys.batch_stream(launcher.run_id), keys.TRAINER_GROUP)["pending"]
        metrics = [json.loads(f[b"data"]) for _, f in client.xrange(keys.metrics_stream(launcher.run_id))]
    finally:
        client.close()
    expected = [f"{launcher.run_id}-step{s}" for s in range(NUM_STEPS)]
    assert applied == set(expected)  # nothing lost
    assert stream["entries-added"] == NUM_STEPS  # no batch queued twice
    assert stream["length"] == 0  # every batch left the stream once a checkpoint covered it
    assert pending == 0
    # Nothing applied twice, counted: the trainer's ledger in its last checkpoint (what the parameters
    # contain), and the metric record it writes per application (after that application's checkpoint).
    ledger = final_ledger(tmp_path / "ckpt", launcher.run_id)
    assert Counter(e["batch_id"] for e in ledger) == Counter(expected)
    assert [e["version"] for e in ledger] == list(range(1, NUM_STEPS + 1))
    applications = Counter(r["version"] for r in metrics if r["source"] == "trainer")
    assert applications == Counter(range(1, NUM_STEPS + 1))
    assert trainer_steps(launcher) == NUM_STEPS
    restarted = [e["message"].split(" ", 1)[0] for e in events(launcher) if e["kind"] == "service_restart"]
    assert Counter(restarted) == Counter(name for name, *_, is_restarted in FAULTS if is_restarted)
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
    killed = launcher.kill("trainer", restart=False)  # not restarted
    assert killed.wait(30) == -signal.SIGKILL
    wait_for(lambda: run_status(launcher)["status"] in ("failed", "succeeded"), 120, "the run to end")
    run = run_status(launcher)
    assert run["status"] == "failed"
    assert "trainer sent no heartbeat" in run["error"] and "did not come back" in run["error"]
    assert any(e["kind"] == "trainer_lost" for e in events(launcher))

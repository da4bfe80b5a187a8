"""Fail closed: `dapo run` with real services (the shipped tiny model) and one fault per test. A run
whose trainer stops advancing, rejects a batch or raises, or whose Redis comes back empty, ends as
`failed` with the reason and `dapo run` exits 1; a run whose only rollout server restarts, or whose
Redis is SIGKILLed and restarted from its append-only file, completes with nothing lost or applied
twice. Deadlines are short so that each failure surfaces in seconds (bench/RESULTS.md, "Fail closed").

Each test launches `dapo run` as a subprocess against a Redis the test owns (services.redis_url), so
it can read the run's record and events and kill or restart Redis itself; it finds the service
processes among the launcher's children.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from dapo import keys
from dapo.local_redis import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples/configs/tiny_cpu.yaml"
NUM_STEPS = 5


def overrides(work: Path, redis_url: str, **extra: Any) -> list[str]:
    values = {
        "policy.train_global_batch_size": 16,
        "policy.train_micro_batch_size": 16,
        "grpo.num_prompts_per_step": 4,
        "grpo.num_generations_per_prompt": 4,
        "grpo.max_num_steps": NUM_STEPS,
        "grpo.val_at_start": False,
        "grpo.val_period": 0,
        "data.validation_file": None,
        "checkpointing.checkpoint_dir": work / "ckpt",
        "checkpointing.save_period": 1,
        "logger.log_dir": work / "logs",
        "logger.tensorboard_enabled": False,
        "services.redis_url": redis_url,
        "services.trainer_restart_timeout_s": 60,
        "services.rollout_timeout_s": 300,  # vLLM starts (and restarts) in 30-150 s on a busy 2-core machine
        "services.redis_timeout_s": 30,
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


@dataclass
class DapoRun:
    """`dapo run` in a subprocess, and the Redis its services use."""

    process: subprocess.Popen[bytes]
    output: Path
    redis_url: str
    started: float

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=5)

    def run_id(self) -> str | None:
        try:
            with self.client() as client:
                ids = client.zrange(keys.runs_index(), 0, -1)
        except redis.ConnectionError:
            return None
        return ids[-1].decode() if ids else None

    def record(self) -> dict[str, str]:
        run_id = self.run_id()
        assert run_id is not None
        with self.client() as client:
            return {k.decode(): v.decode() for k, v in client.hgetall(keys.run_record(run_id)).items()}

    def events(self) -> list[dict[str, Any]]:
        with self.client() as client:
            entries = client.xrange(keys.events_stream(self.run_id() or "?"))
        return [json.loads(fields[b"data"]) for _, fields in entries]

    def version(self) -> int:
        run_id = self.run_id()
        if run_id is None:
            return -1
        try:
            with self.client() as client:
                raw = client.get(keys.policy_version(run_id))
        except redis.ConnectionError:
            return -1
        return int(raw) if raw is not None else -1

    def service(self, name: str) -> psutil.Process:
        """The launcher's child process running `dapo <name>` (torchrun's agent for a multi-rank trainer)."""
        for child in psutil.Process(self.process.pid).children():
            cmdline = child.cmdline()
            if name in cmdline and "dapo.cli" in cmdline:
                return child
        raise AssertionError(f"no {name} process under dapo run ({self.process.pid})")

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


def generating(metrics_url: str) -> bool:
    """Whether the rollout server whose Prometheus endpoint this is serves a Generate call now."""
    try:
        text = urllib.request.urlopen(metrics_url, timeout=2).read().decode()
    except OSError:
        return False
    return any(
        line.startswith("dapo_rollout_requests_in_flight ") and float(line.split()[1]) > 0
        for line in text.splitlines()
    )


@pytest.fixture
def dapo_run(tmp_path: Path) -> Iterator[Callable[..., DapoRun]]:
    started: list[DapoRun] = []

    def start(redis_url: str, **extra: Any) -> DapoRun:
        output = tmp_path / "dapo-run.out"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("REDIS_URL", None)
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dapo.cli",
                    "run",
                    str(CONFIG),
                    *overrides(tmp_path, redis_url, **extra),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        run = DapoRun(process, output, redis_url, time.monotonic())
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)  # the launcher stops what it started
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()


@pytest.fixture
def aof_redis() -> Iterator[RedisServer]:
    server = RedisServer(appendonly=True)
    yield server
    server.stop()


def wait_for_step(run: DapoRun, version: int) -> None:
    wait_for(lambda: run.version() >= version or run.process.poll() is not None, 480, f"version {version}")
    assert run.process.poll() is None, run.text()[-3000:]


def assert_failed(run: DapoRun, *needles: str, timeout_s: float = 300) -> dict[str, str]:
    code = run.wait(timeout_s)
    record = run.record()
    assert record["status"] == "failed", (record, run.text()[-3000:])
    for needle in needles:
        assert needle in record["error"], record["error"]
    assert code == 1, run.text()[-3000:]
    assert f"{record['status']}: {record['error']}" in run.text()
    failed = [e for e in run.events() if e["kind"] == "failed"]
    assert failed and failed[-1]["message"] == record["error"]
    return record


def assert_complete(run: DapoRun, timeout_s: float = 600) -> None:
    code = run.wait(timeout_s)
    record = run.record()
    assert record["status"] == "succeeded", (record, run.text()[-3000:])
    assert code == 0, run.text()[-3000:]
    run_id = run.run_id()
    assert run_id is not None
    with run.client() as client:
        applied = {m.decode() for m in client.smembers(keys.applied_batches(run_id))}
        stream = client.xinfo_stream(keys.batch_stream(run_id))
        metrics = [json.loads(f[b"data"]) for _, f in client.xrange(keys.metrics_stream(run_id))]
    expected = {f"{run_id}-step{s}" for s in range(NUM_STEPS)}
    assert applied == expected  # nothing lost
    assert stream["entries-added"] == NUM_STEPS  # nothing queued twice
    assert stream["length"] == 0  # every batch left the stream once a checkpoint covered it
    trainer_steps = {(m["step"], m["version"]) for m in metrics if m.get("source") == "trainer"}
    assert trainer_steps == {(s, s + 1) for s in range(NUM_STEPS)}  # each batch got one version
    assert run.version() == NUM_STEPS
    assert [e["kind"] for e in run.events()].count("started") == 1  # never started again from step 0


def test_a_trainer_rank_stopped_mid_step_fails_the_run(
    aof_redis: RedisServer, dapo_run: Callable[..., DapoRun]
) -> None:
    # Two ranks: rank 1 stopped leaves rank 0 in a collective, still heartbeating, never advancing.
    run = dapo_run(
        aof_redis.url,
        **{"cluster.trainer_processes_per_node": 2, "services.trainer_progress_timeout_s": 30},
    )
    wait_for_step(run, 2)
    agent = run.service("trainer")
    rank1 = next(p for p in agent.children() if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for(lambda: run.record()["status"] != "running", 300, "the run to end")
        surfaced_s = time.monotonic() - stopped_at
    finally:
        rank1.send_signal(signal.SIGCONT)
    record = assert_failed(
        run, "trainer heartbeats but its policy version stayed at", "trainer_progress_timeout_s"
    )
    waiting = [e for e in run.events() if e["kind"] == "waiting"]
    assert waiting and "the trainer" in waiting[-1]["message"] and waiting[-1]["until"] > time.time() - 60
    print(f"surfaced in {surfaced_s:.1f} s: {record['error']}")


def test_a_batch_the_trainer_rejects_fails_the_run_naming_it(
    aof_redis: RedisServer, dapo_run: Callable[..., DapoRun]
) -> None:
    run = dapo_run(aof_redis.url)
    wait_for_step(run, 1)
    run_id = run.run_id()
    assert run_id is not None
    with run.client() as client:  # a batch the trainer cannot decode, queued behind the loop's own
        client.xadd(
            keys.batch_stream(run_id),
            {"batch_id": "corrupt-batch", "run_id": run_id, "payload": b"not a safetensors buffer"},
        )
    injected_at = time.monotonic()
    wait_for(lambda: run.record()["status"] != "running", 300, "the run to end")
    surfaced_s = time.monotonic() - injected_at
    assert_failed(run, "rejected batch corrupt-batch", "is not a safetensors buffer")
    assert any(e["kind"] == "batch_rejected" for e in run.events())
    print(f"surfaced in {surfaced_s:.1f} s")


def test_a_trainer_that_raises_fails_the_run_with_its_error(
    aof_redis: RedisServer, dapo_run: Callable[..., DapoRun], tmp_path: Path
) -> None:
    # The first checkpoint cannot be written: its directory lies under a regular file.
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    run = dapo_run(aof_redis.url, **{"checkpointing.checkpoint_dir": blocker / "ckpt"})
    record = assert_failed(run, "the trainer (rank 0) raised", "NotADirectoryError", timeout_s=600)
    events = run.events()
    errors = [e for e in events if e["kind"] == "trainer_error"]
    assert errors and "NotADirectoryError" in errors[0]["message"]
    failed = next(e for e in events if e["kind"] == "failed")
    print(f"surfaced {failed['time'] - errors[0]['time']:.2f} s after the exception: {record['error']}")


def test_the_only_rollout_server_restarting_is_waited_for(
    aof_redis: RedisServer, dapo_run: Callable[..., DapoRun]
) -> None:
    run = dapo_run(aof_redis.url)
    wait_for_step(run, 2)
    # Lost in the middle of a generation: once version 3 is out, freeze the server as soon as its
    # metrics show a Generate call in flight (the call hangs), and kill it frozen (the call fails).
    # The launcher restarts it.
    wait_for(lambda: run.version() >= 3, 480, "version 3")
    rollout = run.service("rollout")
    settings_file = Path(rollout.cmdline()[rollout.cmdline().index("--settings") + 1])
    metrics_url = f"http://127.0.0.1:{json.loads(settings_file.read_text())['metrics_port']}/metrics"
    wait_for(lambda: generating(metrics_url), 120, "a Generate call in flight", poll_s=0.01)
    pgid = rollout.pid
    os.killpg(pgid, signal.SIGSTOP)
    time.sleep(3.0)
    os.killpg(pgid, signal.SIGKILL)
    killed_at = time.time()
    assert_complete(run)
    events = run.events()
    kinds = [e["kind"] for e in events]
    # Lost while it generated: the loop waits, visibly and within its deadline, for the restarted server.
    assert "rollout_unavailable" in kinds, kinds
    assert "rollout_lost" in kinds and "service_restart" in kinds and "rollout_back" in kinds
    waits = [e for e in events if e["kind"] == "waiting" and "rollout server" in e["message"]]
    assert waits and "services.rollout_timeout_s" in waits[0]["message"]
    back = next(e for e in events if e["kind"] == "rollout_back" and e["time"] > killed_at)
    print(f"waited {back['time'] - killed_at:.1f} s for the restarted rollout server")


def test_redis_killed_and_restarted_from_its_aof_loses_nothing(
    aof_redis: RedisServer, dapo_run: Callable[..., DapoRun]
) -> None:
    run = dapo_run(aof_redis.url)
    wait_for_step(run, 2)
    aof_redis.kill()
    time.sleep(10)  # longer than redis-py's own default retries
    aof_redis.start()
    assert_complete(run)


def test_redis_restarted_without_its_state_fails_the_run_saying_so(
    dapo_run: Callable[..., DapoRun],
) -> None:
    server = RedisServer(appendonly=False)
    try:
        run = dapo_run(server.url)
        wait_for_step(run, 2)
        server.kill()
        server.start()  # empty
        restarted_at = time.monotonic()
        assert_failed(run, "Redis lost this run's state")
        print(f"surfaced in {time.monotonic() - restarted_at:.1f} s")
    finally:
        server.stop()

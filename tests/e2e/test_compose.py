"""The CPU compose stack for real: images built (Debian stand-ins for the public base images where no
registry answers), `docker compose -f docker-compose.yml -f docker-compose.cpu.yml up`, the shipped run
config submitted over REST. One stack serves every check, in order:

1. every service turns healthy and Prometheus scrapes all of them;
2. a run learns (held-out accuracy up) while the trainer container is SIGKILLed, the rollout container
   restarted and Redis restarted (append-only file on its volume): it succeeds, every batch applied
   exactly once, none lost;
3. a run whose trainer is stopped and never comes back, and one whose trainer raises, fail with the
   reason instead of hanging;
4. `down` and `up` again with the volumes kept: the finished run's record, metrics and checkpoint are
   still there;
and the teardown removes every container, network and volume the test made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dapo import keys
from dapo.records import TERMINAL_STATUSES
from tests.e2e.docker_stack import ROOT, ComposeStack, DockerEngine, DockerUnavailable, image_env

# The first test also builds the images and starts the stack (a cold build takes 10-20 minutes here).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

NUM_STEPS = 20
MIN_GAIN = 10.0  # held-out points after 20 steps; measured +26 to +32 on the shipped model (test_learning)
STEP_OVERRIDES = [
    f"grpo.max_num_steps={NUM_STEPS}",
    "checkpointing.save_period=2",  # bounds the replay after the trainer's SIGKILL
    "services.trainer_restart_timeout_s=240",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    logs = tmp_path_factory.mktemp("compose")
    try:
        engine = DockerEngine(logs)
    except DockerUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Docker must run in CI: {exc}")
        pytest.skip(f"Docker cannot run here: {exc}")
    stack = ComposeStack(image_env(), logs)
    try:
        started = time.monotonic()
        stack.compose("build", timeout=3600)
        print(f"\ncompose build: {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        stack.up()
        print(f"compose up --wait: {time.monotonic() - started:.0f} s")
        yield stack
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.down()
        left = stack.compose("ps", "-a", "-q", check=False).stdout.strip()
        engine.close()
        assert not left, f"containers left behind: {left}"


def api(stack: ComposeStack, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    reply = httpx.request(method, f"{stack.url}/v1{path}", timeout=30, headers=headers, **kwargs)
    reply.raise_for_status()
    return reply.json()


def submit(stack: ComposeStack, overrides: list[str]) -> str:
    config_yaml = (ROOT / "deploy/runconfig.cpu.yaml").read_text()
    return str(api(stack, "POST", "/runs", json={"config_yaml": config_yaml, "overrides": overrides})["id"])


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass  # the controller restarts with Redis
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def run_record(stack: ComposeStack, run_id: str) -> dict[str, Any]:
    return dict(api(stack, "GET", f"/runs/{run_id}"))


def redis_state(stack: ComposeStack, run_id: str) -> dict[str, Any]:
    """What Redis holds for the run, read inside the compose network (Redis publishes no port)."""
    code = f"""
import json, os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], password=os.environ["DAPO_REDIS_PASSWORD"])
stream = {keys.batch_stream(run_id)!r}
print(json.dumps({{
    "version": int(r.get({keys.policy_version(run_id)!r}) or 0),
    "applied": sorted(m.decode() for m in r.smembers({keys.applied_batches(run_id)!r})),
    "queued": r.xinfo_stream(stream)["entries-added"],
    "left": r.xlen(stream),
    "pending": r.xpending(stream, {keys.TRAINER_GROUP!r})["pending"],
    "events": [json.loads(f[b"data"]) for _, f in r.xrange({keys.events_stream(run_id)!r})],
}}))
"""
    return dict(stack.python("controller", code))


def test_every_service_is_healthy_and_scraped(stack: ComposeStack) -> None:
    ps = [json.loads(line) for line in stack.compose("ps", "--format", "json").stdout.splitlines()]
    health = {c["Service"]: c["Health"] for c in ps if c["Service"] not in ("prometheus", "grafana")}
    assert health == {s: "healthy" for s in ("redis", "reward", "rollout", "trainer", "controller")}

    def all_up() -> bool:
        reply = httpx.get(f"http://127.0.0.1:{stack.prometheus_port}/api/v1/targets", timeout=10)
        targets = reply.json()["data"]["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets} == {
            job: "up" for job in ("controller", "reward", "rollout", "trainer")
        }

    wait_for(all_up, 90, "Prometheus to scrape every service")


def test_run_learns_through_trainer_kill_rollout_and_redis_restarts(stack: ComposeStack) -> None:
    run_id = submit(stack, STEP_OVERRIDES)
    started = time.monotonic()
    step = lambda: int(run_record(stack, run_id).get("policy_version") or 0)  # noqa: E731

    wait_for(lambda: step() >= 3, 300, "policy version 3")
    trainer_pid = stack.container_pid("trainer")
    os.kill(trainer_pid, signal.SIGKILL)  # a crash, not a stop: the restart policy brings it back
    wait_for(lambda: stack.restart_count("trainer") >= 1, 60, "the trainer container to restart")
    assert stack.container_pid("trainer") != trainer_pid
    wait_for(lambda: step() >= 7, 400, "policy version 7 after the trainer restart")

    rollout_pid = stack.container_pid("rollout")
    stack.compose("restart", "rollout", timeout=300)
    assert stack.container_pid("rollout") != rollout_pid
    wait_for(lambda: step() >= 11, 400, "policy version 11 after the rollout restart")

    redis_pid = stack.container_pid("redis")
    stack.compose("restart", "redis", timeout=120)
    assert stack.container_pid("redis") != redis_pid

    wait_for(lambda: run_record(stack, run_id)["status"] in TERMINAL_STATUSES, 900, "the run to end")
    record = run_record(stack, run_id)
    print(f"run with three faults: {time.monotonic() - started:.0f} s, {record}")
    assert record["status"] == "succeeded", (record, stack.logs())

    state = redis_state(stack, run_id)
    expected = [f"{run_id}-step{s}" for s in range(NUM_STEPS)]
    assert state["applied"] == sorted(expected)  # none lost
    assert state["queued"] == NUM_STEPS and state["pending"] == 0  # each batch queued once
    assert state["left"] == 0  # and deleted once a checkpoint covered it
    assert state["version"] == NUM_STEPS  # one version per batch
    kinds = Counter(e["kind"] for e in state["events"])
    assert kinds["trainer_ready"] >= 2 and kinds["rollout_back"] >= 1, kinds  # both came back and said so

    # The final checkpoint's ledger: every batch applied exactly once, versions 1..N in order.
    ledger = stack.python(
        "trainer",
        "import json, pathlib; root = pathlib.Path('/results/checkpoints') / "
        f"{run_id!r}; last = max(root.glob('step_*'), key=lambda p: int(p.name[5:])); "
        "print(json.dumps(json.loads((last / 'trainer_state.json').read_text())['ledger']))",
    )
    counts = Counter(e["batch_id"] for e in ledger)
    assert sorted(counts) == sorted(expected) and set(counts.values()) == {1}, counts
    assert [e["version"] for e in ledger] == list(range(1, NUM_STEPS + 1))

    metrics = api(stack, "GET", f"/runs/{run_id}/metrics")
    accuracy = {int(m["step"]): float(m["val/accuracy"]) for m in metrics if "val/accuracy" in m}
    assert {0, NUM_STEPS} <= set(accuracy), accuracy
    gain = 100 * (accuracy[NUM_STEPS] - accuracy[0])  # points
    print(f"held-out accuracy {accuracy[0]:.1%} -> {accuracy[NUM_STEPS]:.1%} ({gain:+.1f} points)")
    assert gain >= MIN_GAIN, accuracy
    stack.finished_run = run_id  # type: ignore[attr-defined]  # for the restart check below


def test_a_trainer_that_never_comes_back_fails_the_run(stack: ComposeStack) -> None:
    run_id = submit(stack, ["grpo.max_num_steps=200", "services.trainer_restart_timeout_s=20"])
    wait_for(lambda: int(run_record(stack, run_id).get("policy_version") or 0) >= 1, 300, "version 1")
    stack.compose("stop", "trainer", timeout=120)
    try:
        wait_for(lambda: run_record(stack, run_id)["status"] in TERMINAL_STATUSES, 120, "the run to fail")
        record = run_record(stack, run_id)
        assert record["status"] == "failed", record
        assert "trainer" in record["error"], record
    finally:
        stack.compose("start", "trainer", timeout=120)


def test_a_trainer_that_raises_fails_the_run_with_its_error(stack: ComposeStack) -> None:
    """The trainer cannot write its checkpoint (a file stands where the directory should be): the run
    fails with the trainer's exception, instead of staying "running" while the container restarts."""
    run_id = submit(stack, ["checkpointing.checkpoint_dir=/etc/hostname/ckpt", "checkpointing.save_period=1"])
    wait_for(lambda: run_record(stack, run_id)["status"] in TERMINAL_STATUSES, 300, "the run to fail")
    record = run_record(stack, run_id)
    assert record["status"] == "failed" and "NotADirectoryError" in record["error"], record
    assert "the trainer (rank 0) raised" in record["error"], record
    wait_for(
        lambda: "(healthy)" in stack.compose("ps", "trainer").stdout, 300, "the trainer to be healthy again"
    )


def test_records_metrics_and_checkpoint_survive_down_and_up(stack: ComposeStack) -> None:
    run_id = getattr(stack, "finished_run", None)
    if run_id is None:
        pytest.fail("the learning run did not finish; nothing to check after a restart")
    before = run_record(stack, run_id)
    metrics_before = api(stack, "GET", f"/runs/{run_id}/metrics")
    stack.compose("down", "--timeout", "20", timeout=300)  # containers and network go, volumes stay
    stack.up()
    after = run_record(stack, run_id)
    assert after["status"] == "succeeded" and after["policy_version"] == before["policy_version"]
    assert api(stack, "GET", f"/runs/{run_id}/metrics") == metrics_before
    exported = stack.python(
        "trainer",
        "import json, pathlib; print(json.dumps(sorted(p.name for p in "
        f"(pathlib.Path('/results/checkpoints') / {run_id!r} / 'step_{NUM_STEPS}' / 'hf').iterdir())))",
    )
    assert "config.json" in exported and "model.safetensors" in exported, exported


def test_teardown_leaves_nothing(stack: ComposeStack, tmp_path: Path) -> None:
    """`down -v` (the fixture's teardown) removes every container, network and volume of a project;
    checked on a throwaway project, so that the shared stack stays up."""
    probe = ComposeStack(stack.env, tmp_path)
    probe.project = f"{stack.project}-probe"
    probe.compose("up", "-d", "--no-deps", "redis", timeout=120)
    label = f"label=com.docker.compose.project={probe.project}"
    assert docker_ls("volume", label) and docker_ls("network", label)  # what there is to remove
    probe.down()
    for kind in ("container", "volume", "network"):
        assert not docker_ls(kind, label), f"{kind}s left behind"


def docker_ls(kind: str, label: str) -> list[str]:
    cmd = ["docker", kind, "ls", "-q", "--filter", label] + (["-a"] if kind == "container" else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.split()

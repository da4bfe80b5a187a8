"""The controller's REST API against a real Redis and a real HTTP server (the loop is off here)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from dapo_controller.settings import ControllerSettings

from tests.integration.controller_server import running_controller

SMALL = {
    "policy": {"train_global_batch_size": 16, "train_micro_batch_size": 4},
    "grpo": {"num_prompts_per_step": 4, "num_generations_per_prompt": 4},
}


@pytest.fixture
def controller(redis_server):  # type: ignore[no-untyped-def]
    with running_controller(ControllerSettings(redis_url=redis_server.url, run_loop=False)) as url:
        yield url


def test_create_list_get_stop_round_trip(controller: str) -> None:
    created = httpx.post(
        f"{controller}/v1/runs",
        json={"config": SMALL, "name": "first", "overrides": ["grpo.max_num_steps=3"]},
    )
    assert created.status_code == 201, created.text
    run = created.json()
    assert run["status"] == "pending" and run["name"] == "first"
    assert run["config"]["grpo"]["max_num_steps"] == 3 and run["config"]["loss_fn"]["ratio_clip_max"] == 0.28
    yaml_run = httpx.post(
        f"{controller}/v1/runs",
        json={
            "config_yaml": "grpo:\n  num_prompts_per_step: 4\n  num_generations_per_prompt: 4\n"
            "policy:\n  train_global_batch_size: 16\n"
        },
    ).json()
    listed = httpx.get(f"{controller}/v1/runs").json()
    assert [r["id"] for r in listed] == [yaml_run["id"], run["id"]]  # newest first
    assert httpx.get(f"{controller}/v1/runs", params={"status": "pending"}).json()[0]["id"] == yaml_run["id"]
    assert httpx.get(f"{controller}/v1/runs/{run['id']}").json()["id"] == run["id"]
    stopped = httpx.post(f"{controller}/v1/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["finished_at"] is not None
    assert httpx.get(f"{controller}/v1/runs/nope").status_code == 404
    assert httpx.post(f"{controller}/v1/runs/nope/stop").status_code == 404
    assert httpx.get(f"{controller}/v1/runs/nope/metrics").status_code == 404


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        (
            {"config": {**SMALL, "grpo": {**SMALL["grpo"], "ratio_clip_mx": 0.3}}},
            ["grpo", "ratio_clip_mx"],
            "did you mean 'grpo.ratio_clip_max'",
        ),
        (
            {"config": SMALL, "overrides": ["loss_fn.ratio_clip_max=1.5"]},
            ["loss_fn", "ratio_clip_max"],
            "Input should be less than 1",
        ),
        (
            {"config": SMALL, "overrides": ["grpo.ratio_clip_min=0.1", "loss_fn.ratio_clip_min=0.2"]},
            [],
            "grpo.ratio_clip_min (0.1) and loss_fn.ratio_clip_min (0.2) differ",
        ),
        ({"config_yaml": "grpo: [1, 2"}, ["body", "config_yaml"], "not valid YAML"),
        ({}, ["body"], "exactly one of 'config'"),
        ({"config": SMALL, "overrides": ["nonsense"]}, [], "must look like section.key=value"),
    ],
)
def test_bad_configs_are_422_naming_the_field(controller: str, body: dict, loc: list, message: str) -> None:
    reply = httpx.post(f"{controller}/v1/runs", json=body)
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert any(d["loc"] == loc and message in d["msg"] for d in detail), detail
    assert httpx.get(f"{controller}/v1/runs").json() == []  # nothing half-created


def test_api_token_guards_mutations(redis_server) -> None:  # type: ignore[no-untyped-def]
    settings = ControllerSettings(redis_url=redis_server.url, run_loop=False, api_token="s3cret")
    with running_controller(settings) as url:
        assert httpx.post(f"{url}/v1/runs", json={"config": SMALL}).status_code == 401
        bad = httpx.post(f"{url}/v1/runs", json={"config": SMALL}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401
        ok = httpx.post(f"{url}/v1/runs", json={"config": SMALL}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 201
        assert httpx.get(f"{url}/v1/runs").status_code == 200  # reads stay open
        assert httpx.post(f"{url}/v1/runs/{ok.json()['id']}/stop").status_code == 401


def test_metrics_since_and_a_restarted_controller_sees_the_runs(redis_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import redis.asyncio as aioredis
    from dapo_controller.store import RunStore

    settings = ControllerSettings(redis_url=redis_server.url, run_loop=False)
    with running_controller(settings) as url:
        run_id = httpx.post(f"{url}/v1/runs", json={"config": SMALL}).json()["id"]

    async def write() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        store = RunStore(client)
        await store.update_run(run_id, status="running")
        for step in range(4):
            await store.add_metrics(run_id, {"step": step, "source": "controller", "train/reward": step / 10})
        await client.aclose()

    asyncio.run(write())
    with running_controller(settings) as url:  # a new process would see the same Redis state
        run = httpx.get(f"{url}/v1/runs/{run_id}").json()
        assert (
            run["status"] == "running" and run["step"] == 3 and run["latest_metrics"]["train/reward"] == 0.3
        )
        since = httpx.get(f"{url}/v1/runs/{run_id}/metrics", params={"since": 2}).json()
        assert [m["step"] for m in since] == [2, 3]
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert "dapo_controller_runs" in httpx.get(f"{url}/metrics").text
        assert httpx.get(f"{url}/docs").status_code == 200


def test_events_stream_replays_then_follows(redis_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    import redis.asyncio as aioredis
    from dapo_controller.store import RunStore

    async def act(run_id: str, what: str) -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        store = RunStore(client)
        if what == "start":
            await store.update_run(run_id, status="running")
        elif what == "metric":
            await store.add_metrics(run_id, {"step": 1, "source": "trainer", "train/loss": 0.5})
            await store.add_event(run_id, "note", "a new event")
        else:
            await store.update_run(run_id, status="succeeded")
        await client.aclose()

    settings = ControllerSettings(redis_url=redis_server.url, run_loop=False)
    with running_controller(settings) as url:
        run_id = httpx.post(f"{url}/v1/runs", json={"config": SMALL}).json()["id"]
        asyncio.run(act(run_id, "start"))
        seen: list[tuple[str, dict]] = []

        def later() -> None:
            time.sleep(1.0)
            asyncio.run(act(run_id, "metric"))
            time.sleep(0.5)
            asyncio.run(act(run_id, "end"))

        threading.Thread(target=later, daemon=True).start()
        with httpx.stream("GET", f"{url}/v1/runs/{run_id}/events", timeout=20) as reply:
            kind = None
            for line in reply.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind:
                    seen.append((kind, json.loads(line.split(":", 1)[1])))
        kinds = [k for k, _ in seen]
        assert ("event", "created") in [(k, d.get("kind")) for k, d in seen]  # replayed
        assert ("event", "note") in [(k, d.get("kind")) for k, d in seen]  # followed
        assert any(k == "metrics" and d["train/loss"] == 0.5 for k, d in seen)
        statuses = [d["status"] for k, d in seen if k == "status"]
        assert statuses[0] == "running" and statuses[-1] == "succeeded"
        assert kinds.count("status") >= 2

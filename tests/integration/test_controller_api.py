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


# --- the store itself, against the same real Redis ----------------------------------------------


def _with_store(redis_url: str, body):  # type: ignore[no-untyped-def]
    """Run `await body(store)` on a fresh RunStore and close its connection afterwards."""
    import asyncio

    import redis.asyncio as aioredis
    from dapo_controller.store import RunStore

    async def main():  # type: ignore[no-untyped-def]
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await body(RunStore(client))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_a_terminal_status_is_final(redis_server) -> None:  # type: ignore[no-untyped-def]
    from dapo.config import parse_config

    async def body(store):  # type: ignore[no-untyped-def]
        run = await store.create_run(parse_config(SMALL), name="guarded")
        await store.update_run(run.id, status="running", started_at=1.0)
        await store.update_run(run.id, status="failed", error="rollout died", finished_at=2.0)
        # A late writer (the loop ending, a user stopping) cannot rewrite how the run ended ...
        await store.update_run(run.id, status="succeeded", error=None, finished_at=3.0)
        await store.update_run(run.id, status="running")
        stopped = await store.request_stop(run.id)
        # ... but progress that arrives late is still recorded.
        await store.add_metrics(run.id, {"step": 7, "source": "trainer", "train/loss": 0.1})
        return stopped, await store.get_run(run.id), await store.read_events(run.id)

    stopped, final, events = _with_store(redis_server.url, body)
    assert stopped.status == "failed" and not stopped.stop_requested
    assert (final.status, final.error, final.finished_at) == ("failed", "rollout died", 2.0)
    assert final.step == 7 and final.latest_metrics == {"step": 7, "train/loss": 0.1}
    assert [e["kind"] for _, e in events] == ["created"]  # stopping a finished run records nothing


def test_stop_pending_running_and_the_race_with_a_starting_loop(redis_server) -> None:  # type: ignore[no-untyped-def]
    from dapo.config import parse_config

    async def body(store):  # type: ignore[no-untyped-def]
        config = parse_config(SMALL)
        pending = await store.create_run(config)
        running = await store.create_run(config)
        await store.update_run(running.id, status="running")
        stopped_pending = await store.request_stop(pending.id)
        # The loop picked the pending run up in the same instant and marks it running: too late.
        await store.update_run(pending.id, status="running", started_at=5.0)
        asked = await store.request_stop(running.id)
        again = await store.request_stop(running.id)
        return (
            stopped_pending,
            await store.get_run(pending.id),
            asked,
            again,
            await store.read_events(running.id),
            await store.request_stop("nope"),
        )

    stopped_pending, after_race, asked, again, events, unknown = _with_store(redis_server.url, body)
    assert stopped_pending.status == "stopped" and stopped_pending.finished_at is not None
    assert after_race.status == "stopped" and after_race.stop_requested  # the loop sees the request
    assert asked.status == "running" and asked.stop_requested
    assert again.status == "running"
    assert [e["kind"] for _, e in events] == ["created", "stop_requested"]  # asked once, recorded once
    assert unknown is None


def test_store_queue_order_and_bad_updates(redis_server) -> None:  # type: ignore[no-untyped-def]
    from dapo.config import parse_config

    async def body(store):  # type: ignore[no-untyped-def]
        config = parse_config(SMALL)
        first, second, third = [await store.create_run(config, name=n) for n in ("a", "b", "c")]
        before = (await store.next_pending(), await store.active_run())
        await store.update_run(first.id, status="running")
        during = (await store.next_pending(), await store.active_run())
        problems = []
        for bad in ({"status": "paused"}, {"colour": "red"}, {"latest_metrics": {1, 2}}):
            try:
                await store.update_run(first.id, **bad)
            except (ValueError, TypeError) as exc:
                problems.append(str(exc))
        try:
            await store.update_run("nope", step=1)
        except KeyError as exc:
            problems.append(str(exc))
        listed = [r.name for r in await store.list_runs()]
        pending = [r.name for r in await store.list_runs("pending")]
        return before, during, problems, listed, pending, await store.get_run(first.id)

    before, during, problems, listed, pending, first = _with_store(redis_server.url, body)
    assert before[0].name == "a" and before[1] is None  # the oldest pending run goes first
    assert during[0].name == "b" and during[1].name == "a"
    assert listed == ["c", "b", "a"] and pending == ["c", "b"]
    assert len(problems) == 4 and "unknown run status 'paused'" in problems[0]
    assert "no updatable field 'colour'" in problems[1] and "nope" in problems[3]
    assert first.status == "running"  # a rejected update wrote nothing


def test_read_events_after_an_id_and_blocking(redis_server) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from dapo.config import parse_config

    async def body(store):  # type: ignore[no-untyped-def]
        run = await store.create_run(parse_config(SMALL))
        first_id = await store.add_event(run.id, "note", "one", step=1)
        after_first = await store.read_events(run.id, after_id=first_id, block_ms=50)

        async def later() -> None:
            await asyncio.sleep(0.2)
            await store.add_event(run.id, "note", "two")

        writer = asyncio.create_task(later())
        waited = await store.read_events(run.id, after_id=first_id, block_ms=5000)
        await writer
        return first_id, await store.read_events(run.id), after_first, waited

    first_id, everything, after_first, waited = _with_store(redis_server.url, body)
    assert [e["message"] for _, e in everything] == ["run created", "one", "two"]
    assert everything[1] == (
        first_id,
        {"kind": "note", "message": "one", "time": everything[1][1]["time"], "step": 1},
    )
    assert after_first == []  # nothing new within 50 ms
    assert [e["message"] for _, e in waited] == ["two"]  # the blocking read woke up for it


# --- more of the HTTP surface ----------------------------------------------------------------------


def _sse(reply: httpx.Response) -> list[tuple[str, str, dict]]:
    """(event type, id, data) of each event in a streamed reply, until the server closes it."""
    events, kind, event_id = [], None, None
    for line in reply.iter_lines():
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("id:"):
            event_id = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind:
            events.append((kind, event_id, json.loads(line.split(":", 1)[1])))
    return events


def _label(kind: str, data: dict) -> object:
    return {"status": data.get("status"), "event": data.get("message"), "metrics": data.get("step")}[kind]


def test_events_resume_after_last_event_id(controller: str, redis_server) -> None:  # type: ignore[no-untyped-def]
    run_id = httpx.post(f"{controller}/v1/runs", json={"config": SMALL}).json()["id"]

    async def fill(store):  # type: ignore[no-untyped-def]
        await store.update_run(run_id, status="running")
        await store.add_event(run_id, "note", "before")
        await store.add_metrics(run_id, {"step": 1, "source": "controller", "train/reward": 0.1})
        await store.update_run(run_id, status="succeeded")

    _with_store(redis_server.url, fill)
    with httpx.stream("GET", f"{controller}/v1/runs/{run_id}/events", timeout=20) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        first = _sse(reply)  # a terminal run: everything replayed, then the server closes
    assert [(k, _label(k, d)) for k, _, d in first] == [
        ("status", "succeeded"),
        ("event", "run created"),
        ("event", "before"),
        ("metrics", 1),
    ]
    after_note = first[2][1]

    async def more(store):  # type: ignore[no-untyped-def]
        await store.add_event(run_id, "note", "after")

    _with_store(redis_server.url, more)
    headers = {"Last-Event-ID": after_note}
    with httpx.stream("GET", f"{controller}/v1/runs/{run_id}/events", headers=headers, timeout=20) as reply:
        resumed = _sse(reply)
    labels = [(k, _label(k, d)) for k, _, d in resumed]
    # After the note's cursor: the metrics record and the new event only (the two streams interleave).
    assert labels[0] == ("status", "succeeded") and sorted(labels[1:], key=str) == [
        ("event", "after"),
        ("metrics", 1),
    ]
    bad = httpx.get(f"{controller}/v1/runs/{run_id}/events", headers={"Last-Event-ID": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    assert httpx.get(f"{controller}/v1/runs/nope/events").status_code == 404


def test_a_closed_event_stream_leaves_no_reader_behind(controller: str, redis_client) -> None:  # type: ignore[no-untyped-def]
    run_id = httpx.post(f"{controller}/v1/runs", json={"config": SMALL}).json()["id"]  # stays pending

    def blocked_readers() -> int:
        return sum(c["cmd"] == "xread" and c["flags"] == "b" for c in redis_client.client_list())

    with httpx.stream("GET", f"{controller}/v1/runs/{run_id}/events", timeout=20) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith("id:")
        deadline = time.monotonic() + 5
        while blocked_readers() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert blocked_readers() == 1  # the server waits on Redis for news
    deadline = time.monotonic() + 5
    while blocked_readers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert blocked_readers() == 0


def test_query_and_body_errors_name_the_field(controller: str) -> None:
    reply = httpx.get(f"{controller}/v1/runs", params={"status": "paused"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["query", "status"]
    run_id = httpx.post(f"{controller}/v1/runs", json={"config": SMALL}).json()["id"]
    reply = httpx.get(f"{controller}/v1/runs/{run_id}/metrics", params={"since": -1})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["query", "since"]
    reply = httpx.post(f"{controller}/v1/runs", json={"config_yaml": "- just\n- a list\n"})
    assert reply.json()["detail"] == [
        {"loc": ["body", "config_yaml"], "msg": "must hold a mapping of sections", "type": "value_error"}
    ]
    reply = httpx.post(f"{controller}/v1/runs", json={"config": SMALL, "colour": "red"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "colour"]
    reply = httpx.post(f"{controller}/v1/runs", json={"config": SMALL, "config_yaml": "grpo: {}"})
    assert reply.status_code == 422 and "exactly one of" in reply.json()["detail"][0]["msg"]
    both = httpx.post(
        f"{controller}/v1/runs",
        json={"config": {"grpo": {"ratio_clip_mx": 0.3, "num_prompts_per_step": 0}}},
    ).json()["detail"]
    assert {tuple(d["loc"]) for d in both} >= {("grpo", "ratio_clip_mx"), ("grpo", "num_prompts_per_step")}


def test_token_challenge_and_prometheus_counts(redis_server) -> None:  # type: ignore[no-untyped-def]
    settings = ControllerSettings(redis_url=redis_server.url, run_loop=False, api_token="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    with running_controller(settings) as url:
        denied = httpx.post(
            f"{url}/v1/runs", json={"config": SMALL}, headers={"Authorization": "Basic s3cret"}
        )
        assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
        ids = [
            httpx.post(f"{url}/v1/runs", json={"config": SMALL}, headers=auth).json()["id"] for _ in range(3)
        ]
        assert httpx.post(f"{url}/v1/runs/{ids[0]}/stop", headers=auth).json()["status"] == "stopped"
        spec = httpx.get(f"{url}/openapi.json").json()
        assert spec["paths"]["/v1/runs"]["post"]["security"] == [{"HTTPBearer": []}]
        text = httpx.get(f"{url}/metrics").text
    assert 'dapo_controller_runs{status="pending"} 2.0' in text
    assert 'dapo_controller_runs{status="stopped"} 1.0' in text
    assert 'dapo_controller_requests_total{code="401",method="POST",route="/v1/runs"} 1.0' in text
    assert 'dapo_controller_request_seconds_count{route="/v1/runs"}' in text


def test_readyz_follows_redis(redis_server) -> None:  # type: ignore[no-untyped-def]
    with running_controller(ControllerSettings(redis_url=redis_server.url, run_loop=False)) as url:
        assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
        redis_server.stop()
        reply = httpx.get(f"{url}/readyz", timeout=15)
        assert reply.status_code == 503 and reply.json()["status"] == "unavailable"
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready

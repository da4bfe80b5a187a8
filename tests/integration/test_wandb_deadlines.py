"""W&B never holds a run: a `wandb.init`, `log` or `finish` that does not return is given up on after its
deadline, with an error line saying so. W&B itself is replaced by a stand-in that blocks (a real W&B
cannot be made to hang on purpose); Redis is real."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import types
from typing import Any

import pytest
import redis.asyncio as aioredis
from dapo_controller import wandb_log

from dapo import keys
from dapo.config import load_config


class StuckWandb(types.ModuleType):
    """A `wandb` whose calls named in `stuck` block until `release` is set."""

    def __init__(self, stuck: set[str]) -> None:
        super().__init__("wandb")
        self.stuck = stuck
        self.release = threading.Event()
        self.logged: list[tuple[int, dict[str, Any]]] = []
        self.finished = False

    def _maybe_block(self, name: str) -> None:
        if name in self.stuck:
            self.release.wait(60)

    def init(self, **_kwargs: Any) -> StuckWandb:
        self._maybe_block("init")
        return self

    def log(self, row: dict[str, Any], step: int) -> None:
        self._maybe_block("log")
        self.logged.append((step, row))

    def finish(self) -> None:
        self._maybe_block("finish")
        self.finished = True


@pytest.fixture
def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INIT_TIMEOUT_S", "LOG_TIMEOUT_S", "FINISH_TIMEOUT_S"):
        monkeypatch.setattr(wandb_log, name, 0.5)


def install(monkeypatch: pytest.MonkeyPatch, stuck: set[str]) -> StuckWandb:
    fake = StuckWandb(stuck)
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    return fake


def config(tmp_path: Any) -> Any:
    return load_config(None, ["logger.wandb_enabled=true", f"logger.log_dir={tmp_path}"])


async def feed(client: aioredis.Redis, run_id: str, steps: int) -> None:
    for step in range(steps):
        for source in ("controller", "trainer"):
            record = {"step": step, "source": source, f"{source}/x": float(step)}
            await client.xadd(keys.metrics_stream(run_id), {"data": json.dumps(record)})


def follow(redis_url: str, tmp_path: Any, run_id: str, steps: int | None, caplog: Any) -> tuple[Any, float]:
    """Start a follower for `run_id`; with `steps`, feed that many steps and close it. Returns what
    start_follower returned and the seconds it all took (errors logged go to `caplog`)."""

    async def scenario() -> Any:
        client = aioredis.Redis.from_url(redis_url)
        try:
            follower = await wandb_log.start_follower(run_id, config(tmp_path), client)
            if steps is not None:
                assert follower is not None
                await feed(client, run_id, steps)
                await follower.close()  # logs what is left, then finishes
            return follower
        finally:
            await client.aclose()

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=wandb_log.__name__):
        follower = asyncio.run(asyncio.wait_for(scenario(), 30))
    return follower, time.monotonic() - started


def test_a_stuck_init_is_given_up_on_with_an_error(
    redis_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, short_deadlines: None, caplog: Any
) -> None:
    fake = install(monkeypatch, {"init"})
    follower, took_s = follow(redis_server.url, tmp_path, "run-a", None, caplog)
    assert follower is None and took_s < 5
    assert (
        "run run-a: W&B init did not return within 0.5 s; the run goes on without W&B logging" in caplog.text
    )
    fake.release.set()


def test_a_stuck_finish_or_log_does_not_hold_the_close(
    redis_server: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, short_deadlines: None, caplog: Any
) -> None:
    fake = install(monkeypatch, {"finish"})
    _, took_s = follow(redis_server.url, tmp_path, "run-b", 2, caplog)
    assert took_s < 10
    assert [step for step, _ in fake.logged] == [0, 1]
    assert not fake.finished
    assert "run run-b: W&B finish did not return within 0.5 s; its W&B files may be incomplete" in caplog.text
    fake.release.set()

    # A stuck log: logging stops after the first deadline (no wait per step), finish is not attempted.
    caplog.clear()
    fake = install(monkeypatch, {"log"})
    _, took_s = follow(redis_server.url, tmp_path, "run-c", 5, caplog)
    assert took_s < 5
    assert caplog.text.count("W&B log did not return within 0.5 s; W&B logging stops, the run goes on") == 1
    assert not fake.finished
    fake.release.set()

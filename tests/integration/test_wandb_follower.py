"""The controller logs a run to W&B live, from the run's metric stream in Redis (offline mode here)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from dapo_controller.wandb_log import StepBuffer, WandbFollower

from dapo import keys
from dapo.config import load_config
from tests.wandb_offline import read_offline_run


def test_step_buffer_hands_out_finished_steps_in_order() -> None:
    buffer = StepBuffer()
    assert buffer.add({"step": 0, "source": "validation", "val/accuracy": 0.5}) == []
    assert buffer.add({"step": 0, "source": "controller", "train/reward": 0.1}) == []
    assert buffer.add({"step": 1, "source": "controller", "train/reward": 0.2}) == []  # staleness 1
    rows = buffer.add({"step": 0, "source": "trainer", "train/loss": 1.0})
    assert rows == [{"step": 0, "val/accuracy": 0.5, "train/reward": 0.1, "train/loss": 1.0}]
    assert buffer.add({"step": 1, "source": "trainer", "train/loss": 0.9}) == [
        {"step": 1, "train/reward": 0.2, "train/loss": 0.9}
    ]
    assert buffer.add({"step": 1, "source": "validation", "val/accuracy": 0.6}) == []  # late: dropped
    assert buffer.add({"step": 2, "source": "validation", "val/accuracy": 0.7}) == []
    assert buffer.flush() == [{"step": 2, "val/accuracy": 0.7}]


def follow_and_log(redis_url: str, log_dir: str, out: str) -> None:
    """In a process of its own (W&B keeps process-wide state that other tests of a session share):
    feed a run's metric stream while the follower runs; write how many steps were logged live."""
    config = load_config(
        None,
        [
            "logger.wandb_enabled=true",
            "logger.wandb.project=dapo-test",
            "logger.wandb.name=follower",
            f"logger.log_dir={log_dir}",
            "grpo.seed=7",
        ],
    )

    async def scenario() -> int:
        client = aioredis.Redis.from_url(redis_url)
        stream = keys.metrics_stream("run-wb")

        async def add(record: dict) -> None:
            await client.xadd(stream, {"data": json.dumps(record)})

        follower = WandbFollower("run-wb", config, client)
        await follower.start()
        await add({"step": 0, "source": "controller", "train/reward": 0.25})
        await add({"step": 0, "source": "trainer", "train/loss": 1.5})
        await add({"step": 1, "source": "controller", "train/reward": 0.5})
        await add({"step": 1, "source": "trainer", "train/loss": 1.25})
        # Live: step 0 and 1 are logged before the run ends.
        for _ in range(100):
            if follower.buffer._next == 2:
                break
            await asyncio.sleep(0.1)
        live = follower.buffer._next
        await add({"step": 2, "source": "validation", "val/accuracy": 0.75})
        await follower.close()
        await client.aclose()
        return live

    Path(out).write_text(json.dumps(asyncio.run(asyncio.wait_for(scenario(), 420))))


def test_a_run_is_logged_while_it_runs(redis_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    process = multiprocessing.get_context("spawn").Process(
        target=follow_and_log, args=(redis_server.url, str(tmp_path), str(tmp_path / "live.json"))
    )
    process.start()
    process.join(480)  # W&B offline took from 4 s to over 2 minutes here to start and finish
    if process.is_alive():
        process.kill()
    assert process.exitcode == 0, f"the follower's process ended with {process.exitcode}"
    assert json.loads((tmp_path / "live.json").read_text()) == 2
    (run_dir,) = (tmp_path / "run-wb" / "wandb").glob("offline-run-*")
    rows, logged_config = read_offline_run(run_dir)
    by_step = {row["_step"]: row for row in rows}
    assert by_step[0]["train/reward"] == 0.25 and by_step[0]["train/loss"] == 1.5
    assert by_step[1]["train/loss"] == 1.25
    assert by_step[2]["val/accuracy"] == 0.75
    assert logged_config["grpo"]["seed"] == 7

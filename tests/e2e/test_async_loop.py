"""The asynchronous loop (grpo.max_staleness = 1) with real services and the shipped tiny model: one run,
its trainer and then its controller SIGKILLed mid-run (the launcher restarts them: a stop and a
resume), then three properties read back from the run's batch stream and metrics:
- every trained sample's policy version is at least the trainer's version minus max_staleness, and
  some batches were trained on samples one version old (the loop really ran ahead);
- the controller queued each batch while the trainer was at most max_staleness versions behind it, and
  some before the trainer needed them (the trainer was kept fed); the importance correction was on
  without being asked for (it follows max_staleness);
- dynamic sampling filled every batch with mixed groups only (some answers right, some wrong);
- the stop and resume lost and doubled nothing: one batch per step, each applied exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from dapo import keys
from dapo.batch import TrainBatch
from dapo.config import load_config
from dapo.launch.launcher import Launcher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
NUM_STEPS = 8
MAX_STALENESS = 1
GROUP_SIZE = 4


@dataclass
class AsyncRun:
    run: dict[str, Any]
    run_id: str
    batches: list[TrainBatch]
    applied: set[str]
    trainer_records: list[dict[str, Any]]
    controller_records: list[dict[str, Any]]
    progress_steps: set[int]
    kinds: list[str]


def _version(client: redis.Redis, run_id: str) -> int:
    raw = client.get(keys.policy_version(run_id))
    return int(raw) if raw is not None else -1


@pytest.fixture(scope="module")
def async_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsyncRun]:
    work = tmp_path_factory.mktemp("async-loop")
    overrides = {
        "policy.train_global_batch_size": 16,
        "policy.train_micro_batch_size": 16,
        "grpo.num_prompts_per_step": 4,
        "grpo.num_generations_per_prompt": GROUP_SIZE,
        "grpo.max_num_steps": NUM_STEPS,
        "grpo.max_staleness": MAX_STALENESS,
        "grpo.use_dynamic_sampling": True,
        "grpo.val_at_start": False,
        "grpo.val_period": 0,
        "data.validation_file": "null",
        "checkpointing.checkpoint_dir": work / "ckpt",
        "checkpointing.save_period": 2,  # batches applied but not yet checkpointed when the trainer dies
        "services.redis_keep_applied_batches": NUM_STEPS,  # the batches are read back below
        "logger.log_dir": work / "logs",
        "logger.tensorboard_enabled": False,
    }
    config = load_config(ROOT / "examples/configs/tiny_cpu.yaml", [f"{k}={v}" for k, v in overrides.items()])
    assert config.loss_fn.use_importance_sampling_correction  # the default with max_staleness > 0
    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's model and data paths are relative to the repository
    launcher = Launcher(config, work / "launch", config.model_dump(mode="json"))
    try:
        launcher.start()
        run_id = launcher.submit()
        assert launcher.redis_url is not None
        client = redis.Redis.from_url(launcher.redis_url)

        def inject() -> None:
            for name, after in (("trainer", 3), ("controller", 5)):
                deadline = time.monotonic() + 600
                while _version(client, run_id) < after and time.monotonic() < deadline:
                    time.sleep(0.2)
                process = next(s for s in launcher.services if s.name == name).process
                assert process is not None
                os.killpg(process.pid, signal.SIGKILL)

        injector = threading.Thread(target=inject, daemon=True)
        injector.start()
        run = launcher.follow()
        injector.join(10)
        entries = client.xrange(keys.batch_stream(run_id))
        yield AsyncRun(
            run=run,
            run_id=run_id,
            batches=[TrainBatch.from_fields(fields) for _, fields in entries],
            applied={m.decode() for m in client.smembers(keys.applied_batches(run_id))},
            trainer_records=[
                r
                for _, f in client.xrange(keys.metrics_stream(run_id))
                if (r := json.loads(f[b"data"])).get("source") == "trainer"
            ],
            controller_records=[
                r
                for _, f in client.xrange(keys.metrics_stream(run_id))
                if (r := json.loads(f[b"data"])).get("source") == "controller"
            ],
            progress_steps={int(r["step"]) for r in launcher.records if r.get("source") == "trainer"},
            kinds=[json.loads(f[b"data"])["kind"] for _, f in client.xrange(keys.events_stream(run_id))],
        )
        client.close()
    finally:
        launcher.stop()
        os.chdir(cwd)


def test_the_async_run_succeeds_after_a_stop_and_resume(async_run: AsyncRun) -> None:
    assert async_run.run["status"] == "succeeded", async_run.run
    assert "service_restart" in async_run.kinds and "resumed" in async_run.kinds
    assert async_run.progress_steps == set(range(NUM_STEPS))  # `dapo run` saw every trained step


def test_every_trained_sample_is_within_max_staleness(async_run: AsyncRun) -> None:
    # Batches are applied in step order, one policy version each: batch s trains at version s.
    assert {(r["step"], r["version"]) for r in async_run.trainer_records} == {
        (s, s + 1) for s in range(NUM_STEPS)
    }
    staleness = []
    for batch in async_run.batches:
        trainer_version = batch.step
        assert int(batch.versions.min()) >= trainer_version - MAX_STALENESS, (batch.step, batch.versions)
        assert int(batch.versions.max()) <= trainer_version
        staleness.append(trainer_version - int(batch.versions.min()))
    assert max(staleness) == MAX_STALENESS  # the loop did run ahead of the trainer


def test_dynamic_sampling_fills_async_batches_with_mixed_groups_only(async_run: AsyncRun) -> None:
    for batch in async_run.batches:
        group_ids = np.asarray(batch.metadata["group_ids"])
        assert len(set(group_ids.tolist())) == 4
        for group in set(group_ids.tolist()):
            advantages = batch.advantages[group_ids == group]
            assert len(advantages) == GROUP_SIZE
            assert (advantages > 0).any() and (advantages < 0).any(), (batch.step, advantages)


def test_the_stop_and_resume_lose_and_double_nothing(async_run: AsyncRun) -> None:
    expected = {f"{async_run.run_id}-step{s}" for s in range(NUM_STEPS)}
    assert sorted(b.batch_id for b in async_run.batches) == sorted(expected)  # queued once each
    assert async_run.applied == expected  # all applied
    # A batch applied after the last checkpoint is applied again from that checkpoint (same version);
    # none gets a second version.
    assert sorted({r["version"] for r in async_run.trainer_records}) == list(range(1, NUM_STEPS + 1))


def test_the_controller_keeps_the_trainer_fed_within_the_bound(async_run: AsyncRun) -> None:
    at_commit = {}
    for record in async_run.controller_records:
        step, version = int(record["step"]), int(record["queue/trainer_version_at_commit"])
        # Never further ahead than max_staleness, and never after the trainer could have used the batch.
        assert step - MAX_STALENESS <= version <= step, (step, version)
        at_commit[step] = min(version, at_commit.get(step, version))
    assert set(at_commit) == set(range(NUM_STEPS))
    # Some batches were queued while the trainer still trained the one before: it did not wait for them.
    assert any(version == step - 1 for step, version in at_commit.items() if step > 0), at_commit


def test_the_importance_correction_ran_by_default(async_run: AsyncRun) -> None:
    assert all("train/tis_truncated_frac" in r for r in async_run.trainer_records)

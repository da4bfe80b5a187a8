"""Redis stays bounded over a run, against a real redis-server:
- the batch stream loses each batch once the trainer acknowledges it (after a checkpoint covers it), never
  one still pending, also when the trainer died between the acknowledgement and the trim;
- over many steps of a loop with a stand-in trainer (the trainer's real BatchStream and RunReporter,
  a checkpoint file written before every acknowledgement) and 1 MB batches, the stream's length and
  Redis' `used_memory` stay under the bound stated below, while 65 MB of batches pass through;
- the real trainer process over many steps: the stream never holds more than the batches no checkpoint
  covers yet, is empty at the end, and its metrics and events streams are capped at their maxlen;
- a rollout server that stops answering leaves the registry and is no longer pushed weights by the
  trainer's WeightOutlet (the rollout servers are tests/weight_receiver.py: the real rollout gRPC server
  and WeightUpdater without vLLM).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from dapo_trainer.batches import BatchStream
from dapo_trainer.metrics import RunReporter
from dapo_trainer.redis_io import RetryingRedis
from dapo_trainer.synthetic import make_batch

from dapo import keys
from dapo.batch import TrainBatch
from dapo.local_redis import RedisServer, free_port
from dapo.stream_limits import StreamLimits

VOCAB_SIZE = 512


def _add(client: redis.Redis, run_id: str, steps: range) -> list[str]:
    return [
        client.xadd(
            keys.batch_stream(run_id),
            make_batch(run_id, s, num_sequences=4, vocab_size=VOCAB_SIZE).to_fields(),
        ).decode()
        for s in steps
    ]


def _entry_ids(client: redis.Redis, run_id: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(keys.batch_stream(run_id))]


def test_acknowledged_batches_leave_the_stream_pending_ones_stay(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    run_id = "trim"
    ids = _add(redis_client, run_id, range(6))
    conn = RetryingRedis(redis_server.url, retry_s=5)
    stream = BatchStream(conn, run_id, consumer="first")
    read = [stream.read(block_ms=10) for _ in range(4)]
    assert [e.entry_id for e in read if e] == ids[:4]
    stream.ack(ids[:2])  # a checkpoint covers the first two
    assert _entry_ids(redis_client, run_id) == ids[2:]  # pending (2, 3) and never read (4, 5) stay

    # Out of order: 3 acknowledged while 2 is still pending. Nothing from 2 on may go.
    stream.ack([ids[3]])
    assert _entry_ids(redis_client, run_id) == ids[2:]

    # The trainer dies between an XACK and its trim: the next one trims when it opens the stream, and
    # takes over what is still pending without losing it.
    redis_client.xack(keys.batch_stream(run_id), keys.TRAINER_GROUP, ids[2])
    assert _entry_ids(redis_client, run_id) == ids[2:]
    stream.read(block_ms=10)  # entry 4 delivered to the dead consumer, pending
    restarted = BatchStream(conn, run_id, consumer="second")
    assert _entry_ids(redis_client, run_id) == ids[4:]
    again = restarted.read(block_ms=10)
    assert again is not None and again.entry_id == ids[4]  # redelivered from the stream, fields intact
    assert TrainBatch.from_fields(again.fields).step == 4

    # All acknowledged: the stream is empty, and later batches are trimmed as they are acknowledged.
    last = restarted.read(block_ms=10)
    assert last is not None and last.entry_id == ids[5]
    restarted.ack([ids[4], ids[5]])
    assert _entry_ids(redis_client, run_id) == []
    info = redis_client.xinfo_stream(keys.batch_stream(run_id))
    assert info["entries-added"] == 6
    conn.close()


def test_keep_applied_batches_keeps_the_newest_acknowledged(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    run_id = "keep"
    ids = _add(redis_client, run_id, range(5))
    conn = RetryingRedis(redis_server.url, retry_s=5)
    stream = BatchStream(conn, run_id, keep_acknowledged=2)
    for _ in range(4):
        stream.read(block_ms=10)
    stream.ack(ids[:1])
    assert _entry_ids(redis_client, run_id) == ids  # fewer acknowledged than it keeps
    stream.ack(ids[1:4])
    assert _entry_ids(redis_client, run_id) == ids[2:]  # the newest two acknowledged, and entry 4
    conn.close()


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def test_stream_and_memory_stay_bounded_over_many_steps(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A loop that runs ahead of the trainer by at most `ahead` batches (max_staleness), a stand-in trainer
    that checkpoints every `save_period` batches and acknowledges them only then.

    Bound: the stream never holds more than save_period + ahead + 1 batches (applied since the last
    checkpoint, the one being applied, the ones queued ahead), and used_memory never exceeds its value
    before the run by more than that many batches' bytes, plus the capped metrics and events streams
    (20 records each, a few hundred bytes) and 4 MiB of allocator slack."""
    run_id = "bounded"
    num_steps, save_period, ahead = 60, 4, 2
    batch = make_batch(run_id, 0, num_sequences=64, vocab_size=VOCAB_SIZE, response_length=(2000, 2000))
    batch_bytes = len(batch.to_fields()["payload"])
    assert batch_bytes > 1_000_000
    limits = StreamLimits(events_maxlen=20, metrics_maxlen=20)
    conn = RetryingRedis(redis_server.url, retry_s=5)
    stream_key = keys.batch_stream(run_id)
    redis_client.xgroup_create(stream_key, keys.TRAINER_GROUP, id="0", mkstream=True)
    baseline = _used_memory(redis_client)
    max_len_bound = save_period + ahead + 1
    memory_bound = baseline + max_len_bound * batch_bytes + 4 * 2**20

    stream = BatchStream(conn, run_id, consumer="stand-in")
    reporter = RunReporter(conn, run_id, limits)
    checkpoint = tmp_path / "ledger.json"
    ledger: list[str] = []
    uncommitted: list[str] = []
    queued = 0
    max_len = max_memory = 0
    for version in range(num_steps):
        while queued < min(num_steps, version + ahead + 1):  # the loop queues up to `ahead` batches ahead
            fields = make_batch(
                run_id, queued, num_sequences=64, vocab_size=VOCAB_SIZE, response_length=(2000, 2000)
            ).to_fields()
            redis_client.xadd(stream_key, fields)
            queued += 1
        max_len = max(max_len, redis_client.xlen(stream_key))
        max_memory = max(max_memory, _used_memory(redis_client))
        entry = stream.read(block_ms=100)
        assert entry is not None
        ledger.append(TrainBatch.from_fields(entry.fields).batch_id)
        uncommitted.append(entry.entry_id)
        reporter.step(version, version + 1, {"train/loss": 0.0})
        reporter.event("batch_applied", f"version {version + 1}")
        if (version + 1) % save_period == 0 or version + 1 == num_steps:
            with checkpoint.open("w") as handle:  # the checkpoint is durable before anything is acknowledged
                json.dump(ledger, handle)
                handle.flush()
                os.fsync(handle.fileno())
            stream.ack(uncommitted)
            uncommitted.clear()
        max_len = max(max_len, redis_client.xlen(stream_key))
        max_memory = max(max_memory, _used_memory(redis_client))

    total_bytes = num_steps * batch_bytes
    print(
        f"{num_steps} batches of {batch_bytes / 2**20:.2f} MiB ({total_bytes / 2**20:.0f} MiB): "
        f"stream length <= {max_len} (bound {max_len_bound}), used_memory <= "
        f"{(max_memory - baseline) / 2**20:.1f} MiB over the start (bound "
        f"{(memory_bound - baseline) / 2**20:.1f} MiB)"
    )
    assert max_len <= max_len_bound
    assert max_memory <= memory_bound
    assert total_bytes > 4 * (memory_bound - baseline)  # unbounded, it would have failed
    assert redis_client.xlen(stream_key) == 0
    assert redis_client.xinfo_stream(stream_key)["entries-added"] == num_steps
    assert json.loads(checkpoint.read_text()) == [f"{run_id}-batch-{s}-0" for s in range(num_steps)]
    assert redis_client.xlen(keys.metrics_stream(run_id)) == 20
    assert redis_client.xlen(keys.events_stream(run_id)) == 20
    newest = json.loads(redis_client.xrevrange(keys.metrics_stream(run_id), count=1)[0][1][b"data"])
    assert newest["version"] == num_steps
    conn.close()


@pytest.mark.slow
def test_the_trainer_keeps_the_stream_to_what_no_checkpoint_covers(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The real `dapo trainer` over 9 batches, checkpointing every 3, fed one batch ahead of it."""
    run_id = "trainer-bounded"
    num_steps, save_period = 9, 3
    config = {
        "policy": {
            "model_name": str(tiny_model_dir),
            "train_global_batch_size": 4,
            "train_micro_batch_size": 4,
            "precision": "float32",
            "max_total_sequence_length": 64,
            "generation": {"max_new_tokens": 32},
        },
        "grpo": {"num_prompts_per_step": 1, "num_generations_per_prompt": 4, "max_num_steps": num_steps},
        "checkpointing": {
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "save_period": save_period,
            "keep_top_k": 1,
        },
        "services": {"redis_metrics_maxlen": 5, "redis_events_maxlen": 3},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "trainer.log"
    command = [sys.executable, "-m", "dapo.cli", "trainer", "--redis-url", redis_server.url]
    command += ["--run-id", run_id, "--config", str(config_path), "--publisher-host", "127.0.0.1"]
    command += ["--publisher-port", str(free_port()), "--poll-interval", "0.1", "--exit-when-done"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    stream_key = keys.batch_stream(run_id)
    with log.open("w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        queued, max_len = 0, 0
        deadline = time.monotonic() + 240
        while proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            raw = redis_client.get(keys.policy_version(run_id))
            version = int(raw) if raw is not None else -1
            while version >= 0 and queued < min(num_steps, version + 2):  # one batch queued ahead
                _add(redis_client, run_id, range(queued, queued + 1))
                queued += 1
            max_len = max(max_len, redis_client.xlen(stream_key))
            time.sleep(0.05)
        assert proc.returncode == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Applied since the last checkpoint (at most save_period - 1), the one being applied, one queued.
    print(f"the stream held at most {max_len} batches (bound {save_period + 1})")
    assert max_len <= save_period + 1
    assert redis_client.xlen(stream_key) == 0
    assert redis_client.xinfo_stream(stream_key)["entries-added"] == num_steps
    assert redis_client.scard(keys.applied_batches(run_id)) == num_steps
    metrics = [json.loads(f[b"data"]) for _, f in redis_client.xrange(keys.metrics_stream(run_id))]
    assert [m["version"] for m in metrics] == list(range(num_steps - 4, num_steps + 1))
    assert redis_client.xlen(keys.events_stream(run_id)) <= 3


# --- the rollout registry --------------------------------------------------------------------------


def test_a_stopped_rollout_server_is_pruned_and_no_longer_pushed_to(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import torch
    from dapo_controller.rollout_pool import RolloutPool
    from dapo_controller.rollout_registry import RolloutRegistry
    from dapo_trainer.publish import WeightOutlet

    from tests.weight_receiver import Receivers

    conn = RetryingRedis(redis_server.url, retry_s=5)
    failures: list[str] = []
    outlet = WeightOutlet(
        "127.0.0.1", 0, conn, [], push_timeout_s=30, on_push_failure=lambda a, m: failures.append(a)
    )
    weights = {"w": torch.ones(8, 4)}
    receivers = Receivers(2, {"w": ("float32", (8, 4))}, tmp_path, outlet.publisher.address)

    def publish(version: int) -> list[str]:
        outlet.publish(version, weights, "run")
        report = outlet.wait(60)
        assert report is not None and report.version == version
        return [o.address for o in report.outcomes]

    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        ttl_s = 1.0
        registry = RolloutRegistry(client, ttl_s)
        address_a, address_b = receivers.addresses
        pool = RolloutPool([address_a, address_b], timeout_s=5)
        try:
            await pool.probe()
            assert await registry.refresh(pool.answering()) == []
            assert await registry.members() == sorted([address_a, address_b])
            assert sorted(await asyncio.to_thread(publish, 1)) == sorted([address_a, address_b])
            assert {a: r["version"] for a, r in receivers.applied().items()} == {address_a: 1, address_b: 1}

            receivers.processes[1].kill()
            receivers.processes[1].wait()
            await pool.probe()
            assert await registry.refresh(pool.answering()) == []  # silent for less than the ttl: kept
            await asyncio.sleep(ttl_s + 0.2)
            await pool.probe()
            assert await registry.refresh(pool.answering()) == [address_b]
            assert await registry.members() == [address_a]
            assert await client.zrange(keys.rollout_servers_seen(), 0, -1) == [address_a.encode()]
            assert outlet.servers() == [address_a]
            assert await asyncio.to_thread(publish, 2) == [address_a]
            assert {a: r["version"] for a, r in receivers.applied().items()} == {address_a: 2, address_b: 1}
            assert failures == []  # the stopped server was not even tried
        finally:
            await pool.close()
            await client.aclose()

    try:
        receivers.wait_ready()
        asyncio.run(scenario())
    finally:
        receivers.stop()
        outlet.stop()
        conn.close()


def test_a_server_registered_without_a_last_seen_time_gets_one_ttl(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        try:
            await client.sadd(keys.rollout_servers(), "10.0.0.9:50051")  # registered by an older controller
            registry = RolloutRegistry(client, ttl_s=30)
            assert await registry.refresh([], now=1000.0) == []
            assert await registry.refresh(["10.0.0.1:50051"], now=1029.0) == []
            assert await registry.refresh([], now=1031.0) == ["10.0.0.9:50051"]
            assert await registry.members() == ["10.0.0.1:50051"]
            with pytest.raises(ValueError, match="services.rollout_server_ttl_s"):
                RolloutRegistry(client, ttl_s=0)
        finally:
            await client.aclose()

    from dapo_controller.rollout_registry import RolloutRegistry

    asyncio.run(scenario())

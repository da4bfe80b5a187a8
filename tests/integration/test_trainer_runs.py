"""The trainer as it is launched: `dapo trainer` processes (one rank, or torchrun with two gloo ranks)
against a real Redis, fed TrainBatches through the run's stream.

- two ranks end with the parameters of one rank;
- a trainer SIGKILLed mid-run and restarted resumes from its checkpoint and ends with the parameters
  of an uninterrupted run, every batch applied exactly once; the weights it publishes equal its
  checkpoint; it releases the run when the run record says it ended;
- a two-node trainer (two torchrun agents, `--nnodes=2`), each node with its own checkpoint directory,
  SIGKILLed and restarted, resumes exactly like the trainer above, and a one-rank restore of a two-node
  checkpoint in a shared directory re-shards it;
- malformed batches land in the dead-letter stream, naming the batch and the field, and training goes on;
- the Hugging Face export reloads in transformers with the trainer's own log-probs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dapo_trainer.synthetic import make_batch
from safetensors.torch import load_file

from dapo import keys
from dapo.local_redis import free_port

pytestmark = pytest.mark.slow

VOCAB_SIZE = 512


def _write_config(
    tmp_path: Path, model_dir: Path, num_steps: int, save_period: int, **checkpointing: object
) -> Path:
    config = {
        "policy": {
            "model_name": str(model_dir),
            "train_global_batch_size": 4,
            "train_micro_batch_size": 2,
            "precision": "float32",
            "max_total_sequence_length": 64,
            "generation": {"max_new_tokens": 32},
            # eps well above float32 noise: Adam divides by sqrt(v) + eps, and with a tiny eps a gradient
            # that is zero up to rounding (summed in another order by two ranks) becomes a full-size step.
            "optimizer": {"lr": 1e-3, "eps": 1e-4, "weight_decay": 0.0},
        },
        "grpo": {"num_prompts_per_step": 2, "num_generations_per_prompt": 4, "max_num_steps": num_steps},
        "checkpointing": {
            "checkpoint_dir": str(tmp_path / "checkpoints"),
            "save_period": save_period,
            **checkpointing,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _add_batches(redis_client, run_id: str, steps: range, **kwargs) -> None:  # noqa: ANN001
    for step in steps:
        batch = make_batch(run_id, step, num_sequences=8, vocab_size=VOCAB_SIZE, **kwargs)
        redis_client.xadd(keys.batch_stream(run_id), batch.to_fields())


def _launch(  # noqa: ANN202
    redis_url: str,
    run_id: str,
    config: Path,
    log: Path,
    nproc: int = 1,
    exit_when_done: bool = True,
    publisher_port: int | None = None,
    rendezvous: str | None = None,
):
    """One trainer: a plain process, torchrun with `nproc` ranks, or (`rendezvous`: "host:port/id") one
    of two single-rank torchrun agents of a `--nnodes=2` group that meet there (c10d)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if rendezvous is not None:
        endpoint, _, rendezvous_id = rendezvous.partition("/")
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            f"--rdzv_id={rendezvous_id}",
            "-m",
            "dapo.cli",
        ]
    elif nproc == 1:
        launcher = [sys.executable, "-m", "dapo.cli"]
    else:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}",
            "-m",
            "dapo.cli",
        ]
    args = [
        "trainer",
        "--redis-url",
        redis_url,
        "--run-id",
        run_id,
        "--config",
        str(config),
        "--publisher-host",
        "127.0.0.1",
        "--publisher-port",
        str(publisher_port or free_port()),
        "--poll-interval",
        "0.2",
    ]
    if exit_when_done:
        args.append("--exit-when-done")
    handle = log.open("w")
    # A new session, so that the whole torchrun group can be killed at once.
    return subprocess.Popen(
        [*launcher, *args], stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the trainer and every process under it: torchrun starts its workers in sessions of their
    own, which killing the agent's group alone would leave running."""
    if proc.poll() is None:
        import psutil

        workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        proc.wait(timeout=30)
        psutil.wait_procs(workers, timeout=30)


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        _kill(proc)
    assert code == 0, f"trainer exited with {code}:\n{log.read_text()[-4000:]}"


def _wait_for_version(
    redis_client, run_id: str, version: int, proc: subprocess.Popen, log: Path, timeout: float = 240
) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = redis_client.get(keys.policy_version(run_id))
        if raw is not None and int(raw) >= version:
            return
        assert proc.poll() is None, f"trainer died:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)
    raise AssertionError(f"version {version} not reached:\n{log.read_text()[-4000:]}")


def _export(tmp_path: Path, run_id: str, version: int):  # noqa: ANN202
    return load_file(tmp_path / "checkpoints" / run_id / f"step_{version}" / "hf" / "model.safetensors")


def _max_difference(a, b) -> float:  # noqa: ANN001
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _state(tmp_path: Path, run_id: str, version: int) -> dict:
    return json.loads(
        (tmp_path / "checkpoints" / run_id / f"step_{version}" / "trainer_state.json").read_text()
    )


def test_two_ranks_end_with_the_parameters_of_one_rank(
    tmp_path, redis_server, redis_client, tiny_model_dir
) -> None:
    config = _write_config(tmp_path, tiny_model_dir, num_steps=3, save_period=3)
    for run_id, nproc in (("one-rank", 1), ("two-ranks", 2)):
        _add_batches(redis_client, run_id, range(3))
        log = tmp_path / f"{run_id}.log"
        _wait(_launch(redis_server.url, run_id, config, log, nproc=nproc), log)
        assert int(redis_client.get(keys.policy_version(run_id))) == 3
    one, two = _export(tmp_path, "one-rank", 3), _export(tmp_path, "two-ranks", 3)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert _max_difference(one, initial) > 1e-3  # training moved the weights
    assert _max_difference(one, two) < 1e-5
    assert _state(tmp_path, "two-ranks", 3)["world_size"] == 2


def test_sigkill_and_restart_resume_exactly(tmp_path, redis_server, redis_client, tiny_model_dir) -> None:
    from dapo import rpc
    from dapo.v1 import weights_pb2, weights_pb2_grpc
    from dapo.weights import WeightAssembler, state_dict_from_tensors

    num_steps = 5
    config = _write_config(tmp_path, tiny_model_dir, num_steps=num_steps, save_period=2)
    reference_log = tmp_path / "reference.log"
    _add_batches(redis_client, "reference", range(num_steps))
    _wait(_launch(redis_server.url, "reference", config, reference_log), reference_log)

    run_id = "killed"
    _add_batches(redis_client, run_id, range(4))
    first_log = tmp_path / "first.log"
    first = _launch(redis_server.url, run_id, config, first_log)
    try:
        _wait_for_version(redis_client, run_id, 3, first, first_log)
    finally:
        _kill(first)  # SIGKILL: no chance to checkpoint or acknowledge anything more
    killed_at = int(redis_client.get(keys.policy_version(run_id)))
    pending = redis_client.xpending(keys.batch_stream(run_id), keys.TRAINER_GROUP)["pending"]
    # Batches applied after the newest committed checkpoint are still unacknowledged.
    assert pending >= killed_at - 2 * (killed_at // 2)

    _add_batches(redis_client, run_id, range(4, num_steps))
    second_log = tmp_path / "second.log"
    publisher_port = free_port()
    second = _launch(
        redis_server.url, run_id, config, second_log, exit_when_done=False, publisher_port=publisher_port
    )
    try:
        _wait_for_version(redis_client, run_id, num_steps, second, second_log)
        # The weights served to late joiners are exactly the checkpointed (exported) parameters.
        with rpc.sync_channel(f"127.0.0.1:{publisher_port}") as channel:
            stub = weights_pb2_grpc.WeightPublisherStub(channel)
            assembler = WeightAssembler()
            for message in stub.FetchWeights(
                weights_pb2.FetchWeightsRequest(min_version=num_steps), timeout=60
            ):
                assembler.add(message)
            assert assembler.version == num_steps
            published = state_dict_from_tensors(assembler.finish())
        exported = _export(tmp_path, run_id, num_steps)
        assert _max_difference(published, exported) == 0.0
        # The run ends: the trainer releases it and (serving a fixed --run-id) exits cleanly.
        redis_client.hset(keys.run_record(run_id), "status", "succeeded")
        assert second.wait(timeout=60) == 0
    finally:
        _kill(second)

    assert (
        _max_difference(_export(tmp_path, run_id, num_steps), _export(tmp_path, "reference", num_steps))
        < 1e-6
    )
    ledger = _state(tmp_path, run_id, num_steps)["ledger"]
    expected_ids = [
        make_batch(run_id, s, num_sequences=8, vocab_size=VOCAB_SIZE).batch_id for s in range(num_steps)
    ]
    assert [row["batch_id"] for row in ledger] == expected_ids  # each once, in stream order
    assert [row["version"] for row in ledger] == list(range(1, num_steps + 1))
    applied = {m.decode() for m in redis_client.smembers(keys.applied_batches(run_id))}
    assert applied == set(expected_ids)
    assert redis_client.xpending(keys.batch_stream(run_id), keys.TRAINER_GROUP)["pending"] == 0
    # Every batch left the stream once a checkpoint covered it, the ones redelivered after the kill too.
    assert redis_client.xlen(keys.batch_stream(run_id)) == 0
    events = [json.loads(f[b"data"]) for _, f in redis_client.xrange(keys.events_stream(run_id))]
    ready = [e["message"] for e in events if e["kind"] == "trainer_ready"]
    assert ready[0].startswith("trainer serves version 0")
    assert ready[1].startswith(f"trainer serves version {2 * (killed_at // 2)}")  # restored, not restarted
    steps = [json.loads(f[b"data"])["step"] for _, f in redis_client.xrange(keys.metrics_stream(run_id))]
    assert set(steps) == set(range(num_steps))


def _two_nodes(redis_url: str, run_id: str, config: Path, tmp_path: Path, name: str):  # noqa: ANN202
    """The two agents of a `--nnodes=2` trainer on this machine, and their logs."""
    rendezvous = f"127.0.0.1:{free_port()}/{name}"
    logs = [tmp_path / f"{name}-agent{i}.log" for i in range(2)]
    return [_launch(redis_url, run_id, config, log, rendezvous=rendezvous) for log in logs], logs


def _wait_all(agents: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> None:
    try:
        for agent, log in zip(agents, logs, strict=True):
            _wait(agent, log, timeout)
    finally:
        for agent in agents:
            _kill(agent)


def test_two_nodes_with_their_own_directories_resume_exactly_after_sigkill(
    tmp_path, redis_server, redis_client, tiny_model_dir
) -> None:
    """Two torchrun agents (`--nnodes=2`, c10d rendezvous on loopback), each node with its own
    checkpoint directory (`{node_rank}`), both SIGKILLed mid-run and restarted: they resume from the
    newest checkpoint both nodes committed and end with the parameters of an uninterrupted run of the
    same two nodes writing into one shared directory, every batch applied once."""
    import torch
    from dapo_trainer.checkpoint import REPLICATED_FILE, SHARDS_DIR, STATE_FILE, agree_on_version
    from dapo_trainer.distributed import DistContext

    num_steps = 5
    shared = _write_config(tmp_path, tiny_model_dir, num_steps=num_steps, save_period=2, keep_top_k=2)
    per_node = tmp_path / "per-node.yaml"
    per_node.write_text(
        shared.read_text().replace(str(tmp_path / "checkpoints"), str(tmp_path / "node{node_rank}" / "ckpt"))
    )
    node_dirs = [tmp_path / f"node{n}" / "ckpt" for n in range(2)]

    # The uninterrupted reference, at the same time: both nodes write into one shared directory.
    _add_batches(redis_client, "reference", range(num_steps))
    uninterrupted_run = _two_nodes(redis_server.url, "reference", shared, tmp_path, "reference")

    run_id = "two-nodes"
    _add_batches(redis_client, run_id, range(4))
    agents, logs = _two_nodes(redis_server.url, run_id, per_node, tmp_path, "first")
    try:
        _wait_for_version(redis_client, run_id, 3, agents[0], logs[0])
    finally:
        for agent in agents:
            _kill(agent)  # SIGKILL both nodes: nothing more is checkpointed or acknowledged
    killed_at = int(redis_client.get(keys.policy_version(run_id)))
    committed = [
        {p.name for p in (root / run_id).iterdir() if not p.name.endswith(".tmp")} for root in node_dirs
    ]
    assert committed[0] and committed[1]  # both nodes hold their own checkpoint(s)

    _add_batches(redis_client, run_id, range(4, num_steps))
    _wait_all(*_two_nodes(redis_server.url, run_id, per_node, tmp_path, "second"))
    _wait_all(*uninterrupted_run)
    reference = tmp_path / "checkpoints" / "reference"
    assert sorted(p.name for p in reference.iterdir()) == ["step_4", "step_5"]  # keep_top_k=2
    assert {p.name for p in (reference / "step_5").iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt", "hf"}

    for node, root in enumerate(node_dirs):
        # Retention per node, every .tmp finalised or removed, and each node holds what a restore needs.
        assert sorted(p.name for p in (root / run_id).iterdir()) == ["step_4", "step_5"]
        final = root / run_id / f"step_{num_steps}"
        assert (final / STATE_FILE).is_file() and (final / REPLICATED_FILE).is_file()
        assert (final / SHARDS_DIR / ".metadata").is_file()
        # No shared filesystem: each node has its own rank's shards only, and the export is on node 0.
        assert [p.name for p in final.glob("rng_rank*.pt")] == [f"rng_rank{node}.pt"]
        assert [p.name for p in (final / SHARDS_DIR).glob("*.distcp")] == [f"__{node}_0.distcp"]
        assert (final / "hf").is_dir() == (node == 0)
    ledgers = [
        json.loads((root / run_id / "step_5" / STATE_FILE).read_text())["ledger"] for root in node_dirs
    ]
    assert ledgers[0] == ledgers[1]
    expected_ids = [
        make_batch(run_id, s, num_sequences=8, vocab_size=VOCAB_SIZE).batch_id for s in range(num_steps)
    ]
    assert [row["batch_id"] for row in ledgers[0]] == expected_ids  # each once, in stream order
    assert [row["version"] for row in ledgers[0]] == list(range(1, num_steps + 1))
    assert {m.decode() for m in redis_client.smembers(keys.applied_batches(run_id))} == set(expected_ids)
    assert redis_client.xpending(keys.batch_stream(run_id), keys.TRAINER_GROUP)["pending"] == 0
    events = [json.loads(f[b"data"]) for _, f in redis_client.xrange(keys.events_stream(run_id))]
    ready = [e["message"] for e in events if e["kind"] == "trainer_ready"]
    assert ready[1].startswith(f"trainer serves version {2 * (killed_at // 2)} on 2 rank(s)")  # restored

    exported = load_file(node_dirs[0] / run_id / "step_5" / "hf" / "model.safetensors")
    uninterrupted = load_file(reference / "step_5" / "hf" / "model.safetensors")
    assert _max_difference(exported, uninterrupted) == 0.0

    # One rank restores the shared directory's two-rank checkpoint (DCP re-shards) and computes what the
    # export does; from one node's own directory it cannot (rank 1's shards are on the other node).
    _check_export_matches_trainer_model(reference / "step_5", shared)
    one_rank = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend="gloo")
    with pytest.raises(
        ValueError, match=r"no checkpoint can be restored by every rank.*committed \[4, 5\], restorable \[\]"
    ):
        agree_on_version(node_dirs[0] / run_id, one_rank)


def test_bad_batches_are_dead_lettered_and_training_continues(
    tmp_path, redis_server, redis_client, tiny_model_dir
) -> None:
    run_id = "faults"
    config = _write_config(tmp_path, tiny_model_dir, num_steps=2, save_period=1)
    _add_batches(redis_client, run_id, range(1))
    out_of_vocab = make_batch(run_id, 1, num_sequences=8, vocab_size=VOCAB_SIZE)
    out_of_vocab.prompt_ids[5] = out_of_vocab.prompt_ids[5].copy()
    out_of_vocab.prompt_ids[5][1] = VOCAB_SIZE + 7
    redis_client.xadd(keys.batch_stream(run_id), out_of_vocab.to_fields())
    too_long = make_batch(run_id, 1, num_sequences=8, vocab_size=VOCAB_SIZE, prompt_length=(62, 62), seed=1)
    redis_client.xadd(keys.batch_stream(run_id), too_long.to_fields())
    redis_client.xadd(
        keys.batch_stream(run_id), {"batch_id": "garbage", "run_id": run_id, "payload": b"\x00" * 16}
    )
    _add_batches(redis_client, run_id, range(1, 2))
    log = tmp_path / "faults.log"
    _wait(_launch(redis_server.url, run_id, config, log), log)

    assert int(redis_client.get(keys.policy_version(run_id))) == 2
    letters = [
        {k.decode(): v for k, v in fields.items()}
        for _, fields in redis_client.xrange(keys.dead_letter_stream(run_id))
    ]
    reasons = [letter["reason"].decode() for letter in letters]
    assert [letter["batch_id"].decode() for letter in letters] == [
        out_of_vocab.batch_id,
        too_long.batch_id,
        "garbage",
    ]
    assert f"batch {out_of_vocab.batch_id}: field 'prompt_ids' sequence 5" in reasons[0]
    assert "vocabulary" in reasons[0]
    assert f"batch {too_long.batch_id}: field 'response_ids'" in reasons[1]
    assert "policy.max_total_sequence_length (64)" in reasons[1]
    assert "batch garbage: field 'payload'" in reasons[2]
    events = [json.loads(f[b"data"]) for _, f in redis_client.xrange(keys.events_stream(run_id))]
    assert [e["message"] for e in events if e["kind"] == "batch_rejected"] == reasons
    assert redis_client.xpending(keys.batch_stream(run_id), keys.TRAINER_GROUP)["pending"] == 0
    ledger = _state(tmp_path, run_id, 2)["ledger"]
    assert [row["step"] for row in ledger] == [0, 1]

    _check_export_matches_trainer_model(tmp_path / "checkpoints" / run_id / "step_2", config)


def _check_export_matches_trainer_model(checkpoint: Path, config_path: Path) -> None:
    """Restore the sharded checkpoint into the trainer's FSDP model (one rank, in this process) and
    compare its log-probs with those of the HF export loaded by transformers."""
    import torch
    from dapo_trainer.batches import collate
    from dapo_trainer.checkpoint import restore_latest
    from dapo_trainer.distributed import setup_distributed, teardown_distributed
    from dapo_trainer.model import read_model_info
    from dapo_trainer.optim import build_optimizer
    from dapo_trainer.train import setup_model
    from transformers import AutoModelForCausalLM

    from dapo.config import load_config

    config = load_config(config_path)
    ctx = setup_distributed()
    try:
        info = read_model_info(config.policy.model_name, None)
        model = setup_model(config, info, ctx)
        optimizer, scheduler = build_optimizer(model, config.policy.optimizer)
        state, restored = restore_latest(checkpoint.parent, model, optimizer, scheduler, ctx)
        assert restored == checkpoint and state.version == int(checkpoint.name.removeprefix("step_"))
        batch = make_batch("x", 9, num_sequences=4, vocab_size=VOCAB_SIZE)
        mb = collate(batch, range(4), info.pad_token_id)
        with torch.no_grad():
            trainer_logp, _ = model(
                mb.input_ids_BT, mb.attention_mask_BT, mb.response_start_B, mb.targets_BR, False
            )
    finally:
        teardown_distributed()
    hf = AutoModelForCausalLM.from_pretrained(checkpoint / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(input_ids=mb.input_ids_BT, attention_mask=mb.attention_mask_BT).logits
    logp_all = torch.log_softmax(logits.float() / config.policy.generation.temperature, dim=-1)
    for row in range(4):
        start, length = int(mb.response_start_B[row]), len(batch.response_ids[row])
        expected = logp_all[row, start - 1 : start - 1 + length].gather(1, mb.targets_BR[row, :length, None])[
            :, 0
        ]
        torch.testing.assert_close(trainer_logp[row, :length], expected, rtol=0, atol=1e-5)


def test_unreachable_redis_exits_non_zero_with_the_reason(tmp_path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = subprocess.run(
        [sys.executable, "-m", "dapo.cli", "trainer", "--redis-url", url, "--redis-retry-timeout", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 1
    assert f"Redis at {url} unavailable for 1 s" in done.stderr


def test_assignment_heartbeat_and_release(tmp_path, redis_server, redis_client, tiny_model_dir) -> None:
    from dapo.config import load_config

    run_id = "assigned"
    config = load_config(_write_config(tmp_path, tiny_model_dir, num_steps=5, save_period=5))
    log = tmp_path / "service.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "dapo.cli", "trainer", "--redis-url", redis_server.url]
    command += ["--publisher-port", str(free_port()), "--poll-interval", "0.2", "--heartbeat-ttl", "2"]
    with log.open("w") as handle:
        proc = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:

        def heartbeat() -> dict | None:
            raw = redis_client.get(keys.trainer_heartbeat())
            return json.loads(raw) if raw else None

        def wait_until(predicate, what: str) -> None:  # noqa: ANN001
            deadline = time.monotonic() + 120
            while not predicate():
                assert proc.poll() is None, f"trainer died:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, (
                    f"timed out waiting for {what}:\n{log.read_text()[-4000:]}"
                )
                time.sleep(0.2)

        wait_until(lambda: heartbeat() is not None, "the idle heartbeat")
        assert heartbeat()["run_id"] is None and heartbeat()["pid"] > 0
        assert redis_client.pttl(keys.trainer_heartbeat()) <= 2000
        redis_client.hset(keys.run_record(run_id), "status", "running")
        redis_client.hset(
            keys.trainer_assignment(), mapping={"run_id": run_id, "config": config.model_dump_json()}
        )
        wait_until(lambda: redis_client.get(keys.policy_version(run_id)) == b"0", "version 0")
        assert heartbeat()["run_id"] == run_id
        _add_batches(redis_client, run_id, range(2))
        wait_until(lambda: redis_client.get(keys.policy_version(run_id)) == b"2", "version 2")
        assert heartbeat()["version"] == 2
        # Two batches, no checkpoint due yet (save_period 5): nothing acknowledged.
        assert redis_client.xpending(keys.batch_stream(run_id), keys.TRAINER_GROUP)["pending"] == 2
        redis_client.hset(keys.run_record(run_id), "status", "stopped")
        wait_until(lambda: heartbeat()["run_id"] is None, "the release")
        # On release the trainer checkpoints what was applied and acknowledges it.
        assert redis_client.xpending(keys.batch_stream(run_id), keys.TRAINER_GROUP)["pending"] == 0
        assert (tmp_path / "checkpoints" / run_id / "step_2" / "trainer_state.json").is_file()
        assert redis_client.scard(keys.applied_batches(run_id)) == 2
        assert proc.poll() is None  # still serving: waiting for the next assignment
        # The next run starts again at version 0, with a fresh publisher on the same port.
        redis_client.hset(
            keys.trainer_assignment(), mapping={"run_id": "next", "config": config.model_dump_json()}
        )
        wait_until(lambda: redis_client.get(keys.policy_version("next")) == b"0", "the next run's version 0")
        assert heartbeat()["run_id"] == "next"
    finally:
        _kill(proc)

"""`train(config, run_id, links)`: serve one run until it ends, calling the `setup_*` helpers and
then looping over the TrainBatches rank 0 reads.

Per TrainBatch (all ranks unless noted): train (dapo_trainer.step) -> bump the version -> gather the
full weights -> checkpoint when due -> (rank 0) XACK the batches the newest checkpoint covers (and trim
them from the stream) -> SADD them to the applied set -> publish the weights -> SET the version key ->
XADD the metrics.
A batch is acknowledged only once a committed checkpoint includes it, so after a crash the restored
checkpoint plus the redelivered batches give the parameters of an uninterrupted run.
The publish hands the version to the weight outlet's fan-out thread, which sets the version key once
the version is out (dapo_trainer.publish.WeightOutlet); a synchronous run waits for that before it
reads its next batch, an asynchronous one (`grpo.max_staleness` > 0) trains the next batch meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from dapo import keys
from dapo.batch import BatchFormatError, TrainBatch
from dapo.config import RunConfig
from dapo.dtypes import SERVED_DTYPES
from dapo.records import TERMINAL_STATUSES
from dapo.stream_limits import StreamLimits
from dapo_trainer.batches import BatchStream, decode_batch
from dapo_trainer.checkpoint import (
    TrainerState,
    checkpoint_root,
    is_checkpoint_due,
    restore_latest,
    save_checkpoint,
)
from dapo_trainer.distributed import DistContext, broadcast
from dapo_trainer.fsdp import load_full_state_dict, shard_model
from dapo_trainer.heartbeat import Heartbeat
from dapo_trainer.ledger import LedgerEntry
from dapo_trainer.metrics import METRICS, RunReporter
from dapo_trainer.model import LogprobModel, ModelInfo, load_model, read_model_info
from dapo_trainer.optim import build_optimizer
from dapo_trainer.publish import WeightOutlet, gather_full_state_dict
from dapo_trainer.redis_io import RetryingRedis
from dapo_trainer.step import BatchResult, train_on_batch

log = logging.getLogger(__name__)


@dataclass
class TrainerLinks:
    """The process-wide pieces `train` uses (its links to Redis, the weight outlet, the heartbeat); the
    Redis and gRPC ones exist on rank 0 only."""

    ctx: DistContext
    redis: RetryingRedis | None
    outlet: WeightOutlet | None
    weights_dtype: str  # "auto" or a dtype name
    poll_interval_s: float
    exit_when_done: bool
    follow_assignment: bool
    heartbeat: Heartbeat | None = None  # rank 0 only


@dataclass(frozen=True)
class Apply:
    batch: TrainBatch
    entry_id: str
    wait_s: float


@dataclass(frozen=True)
class Idle:
    pass


@dataclass(frozen=True)
class Stop:
    reason: str


@dataclass
class RunIO:
    """Rank 0's Redis side of one run."""

    redis: RetryingRedis
    run_id: str
    stream: BatchStream
    reporter: RunReporter
    uncommitted: list[LedgerEntry] = field(default_factory=list)  # applied, in no committed checkpoint yet
    overlap_publish: bool = False  # asynchronous runs: the next batch trains while a version goes out


# --- setup -----------------------------------------------------------------------------------------


def setup_model(config: RunConfig, info: ModelInfo, ctx: DistContext) -> LogprobModel:
    """The sharded model with the pretrained weights: every rank builds it on the meta device and shards
    it; rank 0 alone reads the weights and sends each rank its shards."""
    options: dict[str, Any] = {
        "chunk_size": config.policy.logprob_chunk_size,
        "temperature": config.policy.generation.temperature,
        "config_overrides": config.policy.hf_config_overrides,
        "activation_checkpointing": config.policy.dtensor_cfg.activation_checkpointing,
    }
    torch.manual_seed(config.grpo.seed)  # weights the directory lacks are initialised from it (rank 0)
    model = shard_model(load_model(info, on_meta=True, **options), config.policy.precision, ctx)
    source = load_model(info, **options) if ctx.is_main else None
    load_full_state_dict(model, source, ctx)
    del source
    torch.manual_seed(config.grpo.seed)  # the same RNG state on every rank, whatever loading drew
    return model


def setup_state(
    config: RunConfig,
    run_id: str,
    model: LogprobModel,
    optimizer: torch.optim.Optimizer,
    scheduler,
    ctx: DistContext,
) -> TrainerState:
    if not config.checkpointing.enabled:
        return TrainerState()
    root = checkpoint_root(config.checkpointing.checkpoint_dir, run_id, ctx.node_rank)
    state, path = restore_latest(root, model, optimizer, scheduler, ctx)
    if path is not None:
        log.info("restored %s: version %d, %d batches applied", path, state.version, len(state.ledger))
    return state


def setup_io(links: TrainerLinks, run_id: str, state: TrainerState, config: RunConfig) -> RunIO | None:
    if not links.ctx.is_main:
        return None
    assert links.redis is not None
    if len(state.ledger):
        # The applied set mirrors the checkpointed ledger; a crash between XACK and SADD left it short.
        links.redis.sadd(keys.applied_batches(run_id), *[e.batch_id for e in state.ledger.entries])
    stream = BatchStream(links.redis, run_id, keep_acknowledged=config.services.redis_keep_applied_batches)
    reporter = RunReporter(links.redis, run_id, StreamLimits.of(config.services))
    return RunIO(links.redis, run_id, stream, reporter)


def resolve_weights_dtype(requested: str, info: ModelInfo) -> str:
    dtype = info.checkpoint_dtype if requested == "auto" else requested
    if dtype not in SERVED_DTYPES:
        raise ValueError(
            f"weights dtype '{dtype}' (from {info.model_dir}/config.json) is not {'/'.join(SERVED_DTYPES)}"
        )
    return dtype


# --- the loop --------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one served run holds (the `io` part on rank 0 only)."""

    run_id: str
    config: RunConfig
    links: TrainerLinks
    info: ModelInfo
    weights_dtype: str
    model: LogprobModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    state: TrainerState
    io: RunIO | None

    @property
    def ctx(self) -> DistContext:
        return self.links.ctx

    def gather(self) -> dict[str, torch.Tensor]:
        return gather_full_state_dict(self.model, self.weights_dtype, self.info.tie_word_embeddings, self.ctx)

    def save(self, full: dict[str, torch.Tensor]) -> None:
        checkpointing = self.config.checkpointing
        save_checkpoint(
            checkpoint_root(checkpointing.checkpoint_dir, self.run_id, self.ctx.node_rank),
            self.state,
            self.model,
            self.optimizer,
            self.scheduler,
            full,
            self.info,
            self.weights_dtype,
            self.ctx,
            checkpointing.keep_top_k,
            self.metric_by_version(),
            checkpointing.higher_is_better,
        )

    def metric_by_version(self) -> dict[int, float] | None:
        """Rank 0: `checkpointing.metric_name` of each policy version, from the run's metric records.

        `val:<m>` is the validation of step s, which ran with version s; `train:<m>` is the training
        record of step s, whose batch produced version s + 1.
        """
        name = self.config.checkpointing.metric_name
        if name is None or self.io is None:
            return None
        source, _, metric = name.partition(":")
        key, shift = f"{source}/{metric}", 0 if source == "val" else 1
        found: dict[int, float] = {}
        for _, fields in self.io.redis.xrange(keys.metrics_stream(self.run_id)):
            record = json.loads(fields[b"data"])
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[int(record["step"]) + shift] = float(value)
        return found


def train(config: RunConfig, run_id: str, links: TrainerLinks) -> str:
    """Serve run `run_id` until it ends; returns why it ended."""
    ctx = links.ctx
    info = read_model_info(config.policy.model_name, config.policy.tokenizer.name)
    model = setup_model(config, info, ctx)
    optimizer, scheduler = build_optimizer(model, config.policy.optimizer, config.policy.scheduler)
    state = setup_state(config, run_id, model, optimizer, scheduler, ctx)
    run = Run(
        run_id=run_id,
        config=config,
        links=links,
        info=info,
        weights_dtype=resolve_weights_dtype(links.weights_dtype, info),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
        io=setup_io(links, run_id, state, config),
    )
    _set_heartbeat(links, run_id, state)
    # Announce the current version (0, or the restored one) and push it: versions count per run, so the
    # rollout servers may still serve another run's weights (or the on-disk model, run ""), whatever
    # their version number. A server that already serves this version acknowledges it without a reload.
    full = run.gather()
    if run.io is not None:
        _publish(links, run.io, state.version, full)
        run.io.reporter.event(
            "trainer_ready", f"trainer serves version {state.version} on {ctx.world_size} rank(s)"
        )
    del full
    if run.io is not None:
        run.io.overlap_publish = config.grpo.max_staleness > 0

    last_done = time.monotonic()
    try:
        while True:
            command = broadcast(
                _next_command(run.io, state, config, info, links, last_done) if run.io else None, ctx
            )
            if isinstance(command, Stop):
                if run.io is not None and links.outlet is not None:
                    links.outlet.wait()  # the last version is out before the run is left
                if config.checkpointing.enabled:
                    _commit_final(run)
                log.info("run %s: %s", run_id, command.reason)
                return command.reason
            if isinstance(command, Apply):
                apply_batch(run, command)
                last_done = time.monotonic()
    finally:
        if run.io is not None and run.io.overlap_publish and links.outlet is not None:
            # Left by an error: let the version in flight go out; its failure, if any, is not this error.
            with contextlib.suppress(Exception):
                links.outlet.wait(links.outlet.push_timeout_s)


def apply_batch(run: Run, command: Apply) -> None:
    """Train on the batch, bump the version, checkpoint when due, publish, acknowledge, report."""
    config, state, ctx, batch = run.config, run.state, run.ctx, command.batch
    started_at = time.time()
    result = train_on_batch(
        run.model, run.optimizer, run.scheduler, batch, config, ctx, run.info.pad_token_id
    )
    stepped = time.perf_counter()  # the batch's last optimizer step is done
    state.version += 1
    state.optimizer_step += result.num_optimizer_steps
    entry = LedgerEntry(batch.batch_id, state.version, batch.step, command.entry_id)
    state.ledger.add(entry)
    if run.io is not None:
        run.io.uncommitted.append(entry)

    t0 = time.perf_counter()
    full = run.gather()
    time_gather = time.perf_counter() - t0
    is_due = is_checkpoint_due(state.version, config)
    t0 = time.perf_counter()
    if is_due:
        run.save(full)
    time_checkpoint = time.perf_counter() - t0
    if run.io is None:
        return
    if is_due or not config.checkpointing.enabled:
        _acknowledge(run.io)  # before the version key moves: the stream is trimmed when the next batch comes
    time_publish = _hand_off(run, run.io, full)
    del full
    _set_heartbeat(run.links, run.run_id, state)
    times = {
        "time/wait_data": command.wait_s,
        "time/forward": result.times.forward,
        "time/backward": result.times.backward,
        "time/optimizer": result.times.optimizer,
        "time/gather": time_gather,
        "time/publish": time_publish,
        "time/checkpoint": time_checkpoint,
    }
    _report_step(run, run.io, batch, result, times, stepped=stepped, started_at=started_at)


def _hand_off(run: Run, io: RunIO, full: dict[str, torch.Tensor]) -> float:
    """Publish the new version (in an asynchronous run without waiting for it to go out); returns the
    seconds this took here (time/publish)."""
    t0 = time.perf_counter()
    _publish(run.links, io, run.state.version, full, wait=not io.overlap_publish)
    return time.perf_counter() - t0


def _report_step(
    run: Run,
    io: RunIO,
    batch: TrainBatch,
    result: BatchResult,
    times: dict[str, float],
    *,
    stepped: float,
    started_at: float,
) -> None:
    """Report the batch's metrics and timings (`stepped`: its last optimizer step, perf_counter;
    `started_at`: its start, Unix s) for the new version."""
    state, outlet = run.state, run.links.outlet
    record = {
        **result.metrics,
        **times,
        "time/train_step": sum(v for k, v in times.items() if k != "time/wait_data"),
        # what the trainer does between its last optimizer step and being ready for the next batch
        "time/after_step": time.perf_counter() - stepped,
        "train/optimizer_step": float(state.optimizer_step),
        # Wall clock (Unix s) of the batch's start and of its version's publication (hand-off, in an
        # asynchronous run): time to accuracy in bench/bench_overlap.py.
        "trainer/started_at": started_at,
        "trainer/published_at": time.time(),
    }
    if io.overlap_publish and outlet is not None and outlet.last_publish_s is not None:
        record["trainer/background_publish_s"] = outlet.last_publish_s  # the last version out
    io.reporter.step(batch.step, state.version, record)
    log.info(
        "batch %s (step %d) -> version %d: loss %.4g, %.2f s",
        batch.batch_id,
        batch.step,
        state.version,
        record["train/loss"],
        record["time/train_step"],
    )


def _next_command(
    io: RunIO, state: TrainerState, config: RunConfig, info: ModelInfo, links: TrainerLinks, since: float
) -> Apply | Idle | Stop:
    """Rank 0: the next batch to apply, or Idle (nothing yet / a batch dealt with here), or Stop."""
    entry = io.stream.read(block_ms=int(links.poll_interval_s * 1000))
    if entry is None:
        reason = _stop_reason(io, state, config, links)
        return Stop(reason) if reason else Idle()
    try:
        batch = decode_batch(
            entry.fields,
            run_id=io.run_id,
            vocab_size=info.vocab_size,
            max_total_sequence_length=config.policy.max_total_sequence_length,
            train_global_batch_size=config.policy.train_global_batch_size,
        )
    except BatchFormatError as exc:
        _reject(io, entry.entry_id, entry.fields, str(exc))
        return Idle()
    if batch.batch_id in state.ledger:
        # Redelivered after a restart but already inside the restored parameters: never apply twice.
        io.stream.ack([entry.entry_id])
        io.redis.sadd(keys.applied_batches(io.run_id), batch.batch_id)
        METRICS.skipped.inc()
        io.reporter.event(
            "batch_skipped",
            f"batch {batch.batch_id} was already applied (version {state.ledger.version_of(batch.batch_id)}); "
            "acknowledged without applying it again",
            batch_id=batch.batch_id,
        )
        return Idle()
    return Apply(batch, entry.entry_id, time.monotonic() - since)


def _stop_reason(io: RunIO, state: TrainerState, config: RunConfig, links: TrainerLinks) -> str | None:
    status = io.redis.hget(keys.run_record(io.run_id), "status")
    if status is not None and status.decode() in TERMINAL_STATUSES:
        return f"run {status.decode()}"
    if links.exit_when_done and state.version >= config.grpo.max_num_steps:
        return f"applied grpo.max_num_steps ({config.grpo.max_num_steps}) batches"
    if links.follow_assignment:
        assigned = io.redis.hget(keys.trainer_assignment(), "run_id")
        if assigned is None or assigned.decode() != io.run_id:
            return "the trainer assignment moved to another run" if assigned else "the trainer was released"
    return None


def _reject(io: RunIO, entry_id: str, fields: dict[bytes, bytes], reason: str) -> None:
    raw_id = fields.get(b"batch_id", b"?")
    batch_id = raw_id.decode(errors="replace") if isinstance(raw_id, bytes) else str(raw_id)
    log.error("rejected %s", reason)
    letter: dict[str, str | bytes] = {
        "batch_id": batch_id,
        "entry_id": entry_id,
        "reason": reason,
        "time": str(time.time()),
    }
    if b"payload" in fields:
        letter["payload"] = fields[b"payload"]
    io.redis.xadd(keys.dead_letter_stream(io.run_id), letter)
    io.reporter.event("batch_rejected", reason, batch_id=batch_id, entry_id=entry_id)
    io.stream.ack([entry_id])
    METRICS.rejected.inc()


def _publish(
    links: TrainerLinks, io: RunIO, version: int, full: dict[str, torch.Tensor], *, wait: bool = True
) -> None:
    """Fan `version` out and announce it once the fan-out is done: the policy-version key is what the
    controller waits for before it generates the next batch, so it must not run ahead of the servers
    (a sample from an older version would be dropped as stale). With `wait`, return once it is
    announced; without, at once (the outlet's thread announces it)."""
    assert links.outlet is not None
    key = keys.policy_version(io.run_id)
    links.outlet.publish(version, full, run_id=io.run_id, announce=lambda v: io.redis.set(key, str(v)))
    if wait:
        links.outlet.wait()


def _acknowledge(io: RunIO) -> None:
    """XACK (which trims them from the stream), then SADD to the applied set, every batch a committed
    checkpoint now covers."""
    if not io.uncommitted:
        return
    io.stream.ack([e.stream_id for e in io.uncommitted])
    io.redis.sadd(keys.applied_batches(io.run_id), *[e.batch_id for e in io.uncommitted])
    io.uncommitted.clear()


def _commit_final(run: Run) -> None:
    """At the end of a run: checkpoint what no checkpoint holds yet, then acknowledge it."""
    needs = broadcast(bool(run.io.uncommitted) if run.io else None, run.ctx)
    if not needs:
        return
    run.save(run.gather())
    if run.io is not None:
        _acknowledge(run.io)


def _set_heartbeat(links: TrainerLinks, run_id: str | None, state: TrainerState) -> None:
    if links.heartbeat is not None:
        links.heartbeat.update(run_id=run_id, version=state.version, step=state.optimizer_step)

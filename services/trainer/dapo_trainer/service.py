"""The trainer service: wait for an assignment, serve that run, release it, wait for the next.

Rank 0 polls the hash `keys.trainer_assignment()` (fields `run_id`, `config` = RunConfig JSON) — or
serves `--run-id` with `--config` (or the run record's `config`) — and shares it with all ranks. A
background thread on rank 0 refreshes `keys.trainer_heartbeat()` (SET with a TTL, value JSON
{run_id, version, pid, step}). Redis that stays unreachable past the retry budget ends the process
with exit status 1 and the reason in the log.

Any other exception while serving a run is reported to that run before the process exits (the
hash `keys.trainer_error(run_id)` and a `trainer_error` event): the controller fails the run with it
instead of waiting for a trainer that crash-loops. Every rank reports its own exception, except a
collective that failed because a peer died (that peer reports, or its silence is the heartbeat's).
"""

from __future__ import annotations

import logging
import os
import time

import redis as redis_lib

from dapo import auth, keys
from dapo.config import RunConfig, load_config
from dapo.records import TERMINAL_STATUSES, event_entry
from dapo.stream_limits import StreamLimits
from dapo_trainer.distributed import DistContext, broadcast, setup_distributed, teardown_distributed
from dapo_trainer.heartbeat import Heartbeat
from dapo_trainer.metrics import METRICS, RunReporter
from dapo_trainer.publish import WeightOutlet
from dapo_trainer.redis_io import RedisUnavailable, RetryingRedis
from dapo_trainer.settings import TrainerSettings
from dapo_trainer.train import TrainerLinks, train

log = logging.getLogger(__name__)


def _config_from_options(options: TrainerSettings, redis: RetryingRedis) -> str | None:
    if options.config_path:
        return load_config(options.config_path, list(options.overrides)).model_dump_json()
    raw = redis.hget(keys.run_record(options.run_id or ""), "config")
    return raw.decode() if raw else None


def _poll_assignment(
    options: TrainerSettings, redis: RetryingRedis, finished: set[str]
) -> tuple[str, str] | None:
    """Rank 0: (run_id, config JSON) to serve now, or None."""
    if options.run_id:
        config = _config_from_options(options, redis)
        return (options.run_id, config) if config else None
    fields = redis.hgetall(keys.trainer_assignment())
    run_id, config = fields.get(b"run_id"), fields.get(b"config")
    if run_id is None or config is None or run_id.decode() in finished:
        return None
    status = redis.hget(keys.run_record(run_id.decode()), "status")
    if status is not None and status.decode() in TERMINAL_STATUSES:
        return None  # a stale assignment of a finished run
    return run_id.decode(), config.decode()


def wait_for_assignment(
    options: TrainerSettings, redis: RetryingRedis | None, ctx: DistContext, finished: set[str]
) -> tuple[str, RunConfig]:
    """Every rank: block until rank 0 finds a run with a valid config."""
    announced = False
    while True:
        found = None
        if ctx.is_main:
            assert redis is not None
            polled = _poll_assignment(options, redis, finished)
            if polled is not None:
                run_id, config_json = polled
                try:
                    RunConfig.model_validate_json(config_json)
                    found = polled
                except ValueError as exc:
                    message = f"trainer cannot serve run {run_id}: invalid config: {exc}"
                    log.error(message)
                    RunReporter(redis, run_id).event("trainer_config_invalid", message)
                    finished.add(run_id)
            elif not announced:
                log.info("waiting for a run (hash %s)", keys.trainer_assignment())
                announced = True
        found = broadcast(found, ctx)
        if found is not None:
            return found[0], RunConfig.model_validate_json(found[1])
        time.sleep(options.poll_interval_s)


def serve(options: TrainerSettings) -> int:
    ctx = setup_distributed()
    redis: RetryingRedis | None = None
    heartbeat: Heartbeat | None = None
    outlet: WeightOutlet | None = None
    try:
        if ctx.is_main:
            redis = RetryingRedis(options.redis_url, retry_s=options.redis_retry_s)
            redis.ping()
            METRICS.serve(options.metrics_port, options.publisher_host)
            heartbeat = Heartbeat(options.redis_url, options.heartbeat_ttl_s).start()
        finished: set[str] = set()
        while True:
            run_id, config = wait_for_assignment(options, redis, ctx, finished)
            if ctx.is_main:
                assert redis is not None
                outlet = _open_outlet(options, redis, run_id, config)
            links = TrainerLinks(
                ctx=ctx,
                redis=redis,
                outlet=outlet,
                weights_dtype=options.weights_dtype,
                poll_interval_s=options.poll_interval_s,
                exit_when_done=options.exit_when_done,
                follow_assignment=options.run_id is None,
                heartbeat=heartbeat,
            )
            try:
                reason = train(config, run_id, links)
            except RedisUnavailable:
                raise
            except Exception as exc:
                report_trainer_error(options.redis_url, run_id, ctx.rank, exc)
                raise
            finished.add(run_id)
            if outlet is not None:
                # Versions restart at 0 in the next run: it gets a fresh publisher (same port).
                outlet.stop()
                outlet = None
            if heartbeat is not None:
                heartbeat.update(run_id=None, version=None, step=None)
            log.info("released run %s (%s)", run_id, reason)
            if options.exit_when_done or options.run_id:
                return 0
    except RedisUnavailable as exc:
        log.error("exiting: %s", exc)
        return 1
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if outlet is not None:
            outlet.stop()
        if redis is not None:
            redis.close()
        teardown_distributed()


def _open_outlet(
    options: TrainerSettings, redis: RetryingRedis, run_id: str, config: RunConfig
) -> WeightOutlet:
    """The weight publisher of one run: its push targets, and push failures as its events."""
    reporter = RunReporter(redis, run_id, StreamLimits.of(config.services))

    def on_push_failure(address: str, message: str) -> None:
        METRICS.push_failures.inc()
        reporter.event("weight_push_failed", message, address=address)

    return WeightOutlet(
        options.publisher_host,
        options.publisher_port,
        redis,
        config.services.rollout_addresses,
        push_timeout_s=config.services.rpc_timeout_s,
        on_push_failure=on_push_failure,
        relay_fanout=config.services.weights_relay_fanout,
        stall_s=config.services.weights_relay_stall_s,
    )


def report_trainer_error(redis_url: str, run_id: str, rank: int, exc: BaseException) -> None:
    """Tell the run that this rank raised `exc` (best effort: the process is about to exit anyway)."""
    import torch.distributed as dist

    if rank != 0 and isinstance(exc, dist.DistError):
        return  # a peer's failure seen through a collective: not this rank's to report
    message = f"{type(exc).__name__}: {exc}"
    log.error("run %s: rank %d raised %s", run_id, rank, message)
    record = {"message": message, "rank": str(rank), "time": str(time.time()), "pid": str(os.getpid())}
    client = redis_lib.Redis.from_url(
        redis_url, socket_timeout=5.0, socket_connect_timeout=5.0, **auth.redis_options(redis_url)
    )
    try:
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(keys.trainer_error(run_id), mapping=record)
            pipe.xadd(
                keys.events_stream(run_id),
                event_entry("trainer_error", f"trainer rank {rank} raised {message}", source="trainer"),
                maxlen=StreamLimits().events_maxlen,  # the run's config may be what failed
                approximate=False,
            )
            pipe.execute()
    except redis_lib.RedisError as report_exc:
        log.warning("could not report the error to run %s: %s", run_id, report_exc)
    finally:
        client.close()

"""Redis key names shared by the controller, the trainer and the tools that read a run.

Everything that must survive a process restart lives under these keys (DESIGN.md: no service keeps
the only copy of anything in its memory).
"""

from __future__ import annotations

PREFIX = "dapo"
TRAINER_GROUP = "trainer"  # consumer group of the batch stream


def runs_index() -> str:
    """Sorted set of run ids, scored by creation time."""
    return f"{PREFIX}:runs"


def run_record(run_id: str) -> str:
    """Hash: status, step, policy_version, error, config (JSON), created/started/finished times."""
    return f"{PREFIX}:run:{run_id}"


def batch_stream(run_id: str) -> str:
    """Stream of TrainBatch entries (dapo.batch), read by the trainer's consumer group. An entry leaves
    it once the trainer has acknowledged it (after a committed checkpoint covers it, or after
    dead-lettering it): dapo_trainer.batches.BatchStream.trim_acknowledged."""
    return f"{PREFIX}:run:{run_id}:batches"


def dead_letter_stream(run_id: str) -> str:
    """Stream of rejected batches, with the reason."""
    return f"{PREFIX}:run:{run_id}:deadletter"


def metrics_stream(run_id: str) -> str:
    """Stream of per-step metric records (field `data`: JSON object with `step` and `source`); the
    newest `services.redis_metrics_maxlen` are kept."""
    return f"{PREFIX}:run:{run_id}:metrics"


def events_stream(run_id: str) -> str:
    """Stream of run events (field `data`: JSON object with `kind`, `message`, `time`); the newest
    `services.redis_events_maxlen` are kept."""
    return f"{PREFIX}:run:{run_id}:events"


def policy_version(run_id: str) -> str:
    """String int: the newest policy version the trainer has committed and published."""
    return f"{PREFIX}:run:{run_id}:version"


def applied_batches(run_id: str) -> str:
    """Set of batch ids the trainer has applied (a mirror of its checkpointed ledger)."""
    return f"{PREFIX}:run:{run_id}:applied"


def controller_state(run_id: str) -> str:
    """Hash of the controller loop's resumable state (dataset cursor, step, pending batch ids)."""
    return f"{PREFIX}:run:{run_id}:loop"


def validated_steps(run_id: str) -> str:
    """Set of the steps whose validation the controller loop has recorded (a resumed loop skips them)."""
    return f"{PREFIX}:run:{run_id}:loop:validated"


def trainer_assignment() -> str:
    """Hash: the run the trainer pool should serve now (`run_id`, `config` JSON)."""
    return f"{PREFIX}:trainer:assignment"


def trainer_heartbeat() -> str:
    """String with a TTL, refreshed by a live trainer (value: JSON with run_id, version, pid)."""
    return f"{PREFIX}:trainer:heartbeat"


def rollout_servers() -> str:
    """Set of host:port of live rollout servers, the ones the trainer publishes weights to (kept by the
    controller: dapo_controller.rollout_registry)."""
    return f"{PREFIX}:rollout:servers"


def rollout_servers_seen() -> str:
    """Sorted set: host:port of each registered rollout server, scored by the Unix time it last answered
    the controller's probe; a server silent for `services.rollout_server_ttl_s` leaves both keys."""
    return f"{PREFIX}:rollout:seen"


def trainer_error(run_id: str) -> str:
    """Hash: the exception a trainer rank raised while serving the run (`message`, `rank`, `time`);
    the controller fails the run with it."""
    return f"{PREFIX}:run:{run_id}:trainer_error"

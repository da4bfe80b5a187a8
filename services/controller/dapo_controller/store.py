"""Runs in Redis: their records, metrics and events. A restarted controller reads them back as they were.

Record hash `keys.run_record(id)`; index `keys.runs_index()` (sorted by creation time); metrics and
events are streams whose entries carry one field `data` holding a JSON object, capped (XADD MAXLEN) at
the limits a run's loop registers with `limit_streams` (its `services.redis_*_maxlen`; the defaults
before that).

A terminal status (succeeded, failed, stopped) is final: the check and the write happen in one Lua
script on the Redis server, so a run stopped by a user while the loop marks it running (or finished)
keeps the status it reached first, whichever process writes second.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from dapo import keys
from dapo.config import RunConfig
from dapo.records import RUN_STATUSES, TERMINAL_STATUSES, event_entry, stream_entry
from dapo.stream_limits import StreamLimits
from dapo_controller.models import RunRecord

_JSON_FIELDS = ("config", "latest_metrics")
UPDATABLE_FIELDS = frozenset(
    {
        "status",
        "step",
        "policy_version",
        "error",
        "started_at",
        "finished_at",
        "latest_metrics",
        "stop_requested",
        "name",
    }
)
# Fields that describe how a run ended: written once, together with the terminal status.
_FINAL_FIELDS = ("status", "error", "finished_at")

_TERMINAL_LUA = " or ".join(f"status == '{s}'" for s in TERMINAL_STATUSES)

# KEYS[1]: record hash; ARGV: field, value, field, value, ...  Returns -1 for an unknown run, else
# the number of fields written (the final fields of a terminal run are skipped).
_UPDATE_SCRIPT = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
local is_terminal = {_TERMINAL_LUA}
local written = 0
for i = 1, #ARGV, 2 do
  local field = ARGV[i]
  local final = field == '{_FINAL_FIELDS[0]}' or field == '{_FINAL_FIELDS[1]}' or field == '{_FINAL_FIELDS[2]}'
  if not (is_terminal and final) then
    redis.call('HSET', KEYS[1], field, ARGV[i + 1])
    written = written + 1
  end
end
return written
"""

# KEYS[1]: record hash; ARGV[1]: the time. Returns what happened: 'missing', 'stopped' (it was
# pending), 'requested' (it is running), 'already' (a stop was requested before) or 'unchanged'.
_STOP_SCRIPT = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'stopped', 'finished_at', ARGV[1], 'stop_requested', '1')
  return 'stopped'
end
if {_TERMINAL_LUA} then return 'unchanged' end
if redis.call('HGET', KEYS[1], 'stop_requested') == '1' then return 'already' end
redis.call('HSET', KEYS[1], 'stop_requested', '1')
return 'requested'
"""


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    data: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
    for name in _JSON_FIELDS:
        data[name] = json.loads(data.get(name) or "{}")
    for name in ("step", "policy_version"):
        data[name] = int(data.get(name) or 0)
    for name in ("created_at", "started_at", "finished_at"):
        data[name] = float(data[name]) if data.get(name) else None
    data["stop_requested"] = data.get("stop_requested") == "1"
    data["error"] = data.get("error") or None
    data["name"] = data.get("name") or None
    return data


def _encode(name: str, value: Any) -> str | int | float:
    if name not in UPDATABLE_FIELDS:
        raise ValueError(f"a run record has no updatable field {name!r}")
    if name == "status" and value not in RUN_STATUSES:
        raise ValueError(f"unknown run status {value!r}")
    if name in _JSON_FIELDS:
        return json.dumps(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    if not isinstance(value, str | int | float):
        raise ValueError(f"run field {name!r} must be a string or a number, not {type(value).__name__}")
    return value


class RunStore:
    """Run records, metrics and events of every run, kept in Redis (the controller keeps no copy)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._update = redis.register_script(_UPDATE_SCRIPT)
        self._stop = redis.register_script(_STOP_SCRIPT)
        self._stream_limits: dict[str, StreamLimits] = {}

    def limit_streams(self, run_id: str, limits: StreamLimits) -> None:
        """Cap the run's metrics and events streams at `limits` from now on."""
        self._stream_limits[run_id] = limits

    def _limits(self, run_id: str) -> StreamLimits:
        return self._stream_limits.get(run_id) or StreamLimits()

    async def create_run(self, config: RunConfig, name: str | None = None) -> RunRecord:
        """Record a new pending run with its resolved config, and its `created` event."""
        run_id = uuid.uuid4().hex[:12]
        now = time.time()
        record = {
            "id": run_id,
            "name": name or "",
            "status": "pending",
            "step": 0,
            "policy_version": 0,
            "created_at": now,
            "config": json.dumps(config.model_dump(mode="json")),
            "latest_metrics": "{}",
            "stop_requested": "0",
        }
        await self._write_record(run_id, record, now)
        await self.add_event(run_id, "created", "run created")
        created = await self.get_run(run_id)
        assert created is not None
        return created

    async def restore_failed(self, run_id: str, config: RunConfig, error: str) -> None:
        """Write back the record of a run whose state Redis lost, as failed with `error`."""
        now = time.time()
        record = {
            "id": run_id,
            "status": "failed",
            "error": error,
            "finished_at": now,
            "created_at": now,
            "config": json.dumps(config.model_dump(mode="json")),
            "latest_metrics": "{}",
            "stop_requested": "0",
        }
        await self._write_record(run_id, record, now)

    async def _write_record(self, run_id: str, record: dict[str, Any], created_at: float) -> None:
        """The run's record hash and its place in the index, in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.run_record(run_id), mapping=record)
            pipe.zadd(keys.runs_index(), {run_id: created_at})
            await pipe.execute()

    async def get_run(self, run_id: str) -> RunRecord | None:
        raw = await self.redis.hgetall(keys.run_record(run_id))
        if not raw:
            return None
        return RunRecord.model_validate(_decode(raw))

    async def _runs(self, newest_first: bool) -> list[RunRecord]:
        ids = await self.redis.zrange(keys.runs_index(), 0, -1, desc=newest_first)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hgetall(keys.run_record(run_id.decode()))
            raws = await pipe.execute()
        return [RunRecord.model_validate(_decode(raw)) for raw in raws if raw]

    async def list_runs(self, status: str | None = None) -> list[RunRecord]:
        """All runs, newest first; only those with `status` if given."""
        return [r for r in await self._runs(newest_first=True) if status is None or r.status == status]

    async def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run record (see UPDATABLE_FIELDS; dicts are stored as JSON).

        Once a run is terminal its status, error and finished_at never change again; other fields
        (step, metrics) still may. Raises KeyError for an unknown run, ValueError for a bad field.
        """
        argv: list[str | int | float] = []
        for name, value in fields.items():
            argv += [name, _encode(name, value)]
        if not argv:
            return
        if await self._update(keys=[keys.run_record(run_id)], args=argv) == -1:
            raise KeyError(f"run {run_id} does not exist")

    async def request_stop(self, run_id: str) -> RunRecord | None:
        """Stop a run: a pending one becomes `stopped` at once; a running one gets `stop_requested`
        (its loop ends it); a terminal one is left as it is. None for an unknown run.

        A pending run stopped here also carries `stop_requested`, so a loop that picked it up in the
        same instant sees the request and ends.
        """
        outcome = await self._stop(keys=[keys.run_record(run_id)], args=[time.time()])
        outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
        if outcome == "missing":
            return None
        if outcome == "stopped":
            await self.add_event(run_id, "stopped", "stopped before it started")
        elif outcome == "requested":
            await self.add_event(run_id, "stop_requested", "stop requested")
        return await self.get_run(run_id)

    async def add_event(self, run_id: str, kind: str, message: str, **extra: Any) -> str:
        """Append an event {"kind", "message", "time", **extra} (dapo.records.run_event); returns its
        stream id."""
        entry = await self.redis.xadd(
            keys.events_stream(run_id),
            event_entry(kind, message, **extra),
            maxlen=self._limits(run_id).events_maxlen,
            approximate=False,
        )
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def add_metrics(self, run_id: str, record: dict[str, Any]) -> None:
        """Append a metrics record (needs "step" and "source"); merge it into the run's
        latest_metrics and raise the run's step to it."""
        if "step" not in record or "source" not in record:
            raise ValueError("a metrics record needs 'step' and 'source'")
        await self.redis.xadd(
            keys.metrics_stream(run_id),
            stream_entry(record),
            maxlen=self._limits(run_id).metrics_maxlen,
            approximate=False,
        )
        run = await self.get_run(run_id)
        if run is not None:
            latest = {**run.latest_metrics, **{k: v for k, v in record.items() if k != "source"}}
            await self.update_run(run_id, latest_metrics=latest, step=max(run.step, int(record["step"])))

    async def read_metrics(self, run_id: str, since_step: int = 0) -> list[dict[str, Any]]:
        """Metric records with step >= since_step, oldest first."""
        entries = await self.redis.xrange(keys.metrics_stream(run_id))
        records = [json.loads(fields[b"data"]) for _, fields in entries]
        return [r for r in records if int(r.get("step", 0)) >= since_step]

    async def read_stream(
        self, key: str, after_id: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        """Entries of one stream after `after_id` as (id, decoded data); waits up to block_ms for one."""
        reply = await self.redis.xread({key: after_id}, count=count, block=block_ms)
        out = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                out.append((entry_id.decode(), json.loads(fields[b"data"])))
        return out

    async def read_events(
        self, run_id: str, after_id: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after `after_id` as (stream id, {"kind", "message", "time", ...})."""
        return await self.read_stream(keys.events_stream(run_id), after_id, block_ms, count)

    async def follow(
        self, run_id: str, events_after: str, metrics_after: str, block_ms: int, count: int = 500
    ) -> list[tuple[str, str, str]]:
        """New events and metric records of a run, as (kind, stream id, JSON text) with kind
        "event" or "metrics"; waits up to block_ms when there is none yet."""
        events_key, metrics_key = keys.events_stream(run_id), keys.metrics_stream(run_id)
        reply = await self.redis.xread(
            {events_key: events_after, metrics_key: metrics_after}, count=count, block=block_ms
        )
        out = []
        for stream_key, entries in reply or []:
            kind = "event" if stream_key.decode() == events_key else "metrics"
            for entry_id, fields in entries:
                out.append((kind, entry_id.decode(), fields[b"data"].decode()))
        return out

    async def next_pending(self) -> RunRecord | None:
        """The oldest pending run, the next to start."""
        for run in await self._runs(newest_first=False):
            if run.status == "pending":
                return run
        return None

    async def active_run(self) -> RunRecord | None:
        """The running run (the newest, should there ever be more than one)."""
        for run in await self.list_runs("running"):
            return run
        return None

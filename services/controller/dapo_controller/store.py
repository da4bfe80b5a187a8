"""Runs in Redis: their records, metrics and events. A restarted controller reads them back as they were.

Record hash `keys.run_record(id)`; index `keys.runs_index()` (sorted by creation time); metrics and
events are streams whose entries carry one field `data` holding a JSON object.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from dapo import keys
from dapo.config import RunConfig
from dapo_controller.models import TERMINAL, RunRecord

_JSON_FIELDS = ("config", "latest_metrics")


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


class RunStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def create_run(self, config: RunConfig, name: str | None = None) -> RunRecord:
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
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.run_record(run_id), mapping=record)
            pipe.zadd(keys.runs_index(), {run_id: now})
            await pipe.execute()
        await self.add_event(run_id, "created", "run created")
        created = await self.get_run(run_id)
        assert created is not None
        return created

    async def get_run(self, run_id: str) -> RunRecord | None:
        raw = await self.redis.hgetall(keys.run_record(run_id))
        if not raw:
            return None
        return RunRecord.model_validate(_decode(raw))

    async def list_runs(self, status: str | None = None) -> list[RunRecord]:
        ids = [i.decode() for i in await self.redis.zrevrange(keys.runs_index(), 0, -1)]
        runs = [r for r in [await self.get_run(i) for i in ids] if r is not None]
        return [r for r in runs if status is None or r.status == status]

    async def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of a run record; a terminal status is never changed again."""
        current = await self.redis.hget(keys.run_record(run_id), "status")
        if current is None:
            raise KeyError(f"run {run_id} does not exist")
        if current.decode() in TERMINAL and "status" in fields:
            fields.pop("status")
            fields = {k: v for k, v in fields.items() if k not in ("error", "finished_at")}
        if not fields:
            return
        mapping = {}
        for key, value in fields.items():
            if key in _JSON_FIELDS:
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "1" if value else "0"
            elif value is None:
                value = ""
            mapping[key] = value
        await self.redis.hset(keys.run_record(run_id), mapping=mapping)

    async def request_stop(self, run_id: str) -> RunRecord | None:
        run = await self.get_run(run_id)
        if run is None:
            return None
        if run.status == "pending":
            await self.update_run(run_id, status="stopped", finished_at=time.time())
            await self.add_event(run_id, "stopped", "stopped before it started")
        elif run.status == "running" and not run.stop_requested:
            await self.update_run(run_id, stop_requested=True)
            await self.add_event(run_id, "stop_requested", "stop requested")
        return await self.get_run(run_id)

    async def add_event(self, run_id: str, kind: str, message: str, **extra: Any) -> str:
        data = {"kind": kind, "message": message, "time": time.time(), **extra}
        entry = await self.redis.xadd(keys.events_stream(run_id), {"data": json.dumps(data)})
        return entry.decode()

    async def add_metrics(self, run_id: str, record: dict[str, Any]) -> None:
        if "step" not in record or "source" not in record:
            raise ValueError("a metrics record needs 'step' and 'source'")
        await self.redis.xadd(keys.metrics_stream(run_id), {"data": json.dumps(record)})
        run = await self.get_run(run_id)
        if run is not None:
            latest = {**run.latest_metrics, **{k: v for k, v in record.items() if k != "source"}}
            await self.update_run(run_id, latest_metrics=latest, step=max(run.step, int(record["step"])))

    async def read_metrics(self, run_id: str, since_step: int = 0) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(keys.metrics_stream(run_id))
        records = [json.loads(fields[b"data"]) for _, fields in entries]
        return [r for r in records if int(r.get("step", 0)) >= since_step]

    async def read_stream(
        self, key: str, after_id: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        reply = await self.redis.xread({key: after_id}, count=count, block=block_ms)
        out = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                out.append((entry_id.decode(), json.loads(fields[b"data"])))
        return out

    async def read_events(
        self, run_id: str, after_id: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        return await self.read_stream(keys.events_stream(run_id), after_id, block_ms, count)

    async def next_pending(self) -> RunRecord | None:
        ids = [i.decode() for i in await self.redis.zrange(keys.runs_index(), 0, -1)]
        for run_id in ids:
            run = await self.get_run(run_id)
            if run is not None and run.status == "pending":
                return run
        return None

    async def active_run(self) -> RunRecord | None:
        for run in await self.list_runs("running"):
            return run
        return None

"""Weights & Biases logging of a run, live, by the controller (so runs submitted over REST log too).

A follower task reads the run's metric stream in Redis, where the controller, the trainer and the
validation write their per-step records, merges them by step and logs each step to W&B once the step
is finished: when the trainer's record for it arrives (then every earlier step is finished too), or when
the run ends. The run's resolved config is the W&B run's config; `WANDB_MODE=offline` (and W&B's other
variables) apply as usual. The W&B run id is the run id, so a restarted controller resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from dapo import keys
from dapo.config import RunConfig

log = logging.getLogger(__name__)


class StepBuffer:
    """Records in, finished steps out (one merged row per step, in step order, each step once)."""

    def __init__(self) -> None:
        self._rows: dict[int, dict[str, Any]] = {}
        self._next = 0  # every step below this was handed out

    def add(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        step = int(record["step"])
        if step < self._next:
            return []  # its step was already logged (W&B takes steps in increasing order only)
        row = self._rows.setdefault(step, {"step": step})
        row.update({k: v for k, v in record.items() if k not in ("step", "source")})
        return self._take(step) if record.get("source") == "trainer" else []

    def flush(self) -> list[dict[str, Any]]:
        return self._take(max(self._rows, default=self._next - 1))

    def _take(self, upto: int) -> list[dict[str, Any]]:
        ready = [self._rows.pop(s) for s in sorted(s for s in self._rows if s <= upto)]
        self._next = max(self._next, upto + 1)
        return ready


def _loggable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "step" and (v is None or isinstance(v, int | float | str))}


class WandbFollower:
    """Logs one run to W&B while it runs; `close()` at the end logs what is left and finishes."""

    def __init__(self, run_id: str, config: RunConfig, redis: aioredis.Redis) -> None:
        self.run_id = run_id
        self.config = config
        self.redis = redis
        self.buffer = StepBuffer()
        self._last_id = "0-0"
        self._wandb_run: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._wandb_run = await asyncio.to_thread(self._init)
        self._task = asyncio.create_task(self._follow(), name=f"dapo-wandb-{self.run_id}")

    def _init(self) -> Any:
        import wandb  # the `wandb` extra: pip install 'dapo[wandb]'

        wandb_cfg = self.config.logger.wandb
        out = Path(self.config.logger.log_dir) / self.run_id
        out.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=wandb_cfg.project,
            name=wandb_cfg.name,
            id=self.run_id,
            resume="allow",
            dir=str(out),
            config=self.config.model_dump(mode="json"),
        )

    async def _read(self, block_ms: int | None) -> list[dict[str, Any]]:
        stream = keys.metrics_stream(self.run_id)
        reply = await self.redis.xread({stream: self._last_id}, count=500, block=block_ms)
        records = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                records.append(json.loads(fields[b"data"]))
        return records

    async def _log(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            await asyncio.to_thread(self._log_sync, rows)

    def _log_sync(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._wandb_run.log(_loggable(row), step=row["step"])

    async def _follow(self) -> None:
        while True:
            for record in await self._read(block_ms=1000):
                await self._log(self.buffer.add(record))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while records := await self._read(block_ms=None):
            for record in records:
                await self._log(self.buffer.add(record))
        await self._log(self.buffer.flush())
        await asyncio.to_thread(self._wandb_run.finish)


async def start_follower(run_id: str, config: RunConfig, redis: aioredis.Redis) -> WandbFollower | None:
    """A started follower when `logger.wandb_enabled`; None otherwise or when W&B cannot start (said why)."""
    if not config.logger.wandb_enabled:
        return None
    follower = WandbFollower(run_id, config, redis)
    try:
        await follower.start()
    except Exception as exc:  # logging must not stop training; the reason is reported
        log.error("run %s: W&B logging could not start: %s", run_id, exc)
        return None
    return follower

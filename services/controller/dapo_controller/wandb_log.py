"""Weights & Biases logging of a run, live, by the controller (so runs submitted over REST log too).

A follower task reads the run's metric stream in Redis, where the controller, the trainer and the
validation write their per-step records, merges them by step and logs each step to W&B once the step
is finished: when the trainer's record for it arrives (then every earlier step is finished too), or when
the run ends. The run's resolved config is the W&B run's config; `WANDB_MODE=offline` (and W&B's other
variables) apply as usual. The W&B run id is the run id, so a restarted controller resumes it.

W&B never holds a run: `wandb.init`, each `log` and `finish` run in a daemon thread of their own and are
waited for at most INIT_TIMEOUT_S, LOG_TIMEOUT_S and FINISH_TIMEOUT_S ($DAPO_WANDB_TIMEOUT_S sets all
three); past that the follower logs an error saying what timed out, stops logging to W&B (the thread is
left behind; being a daemon it does not keep the controller from exiting) and the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis

from dapo import keys
from dapo.config import RunConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

_DEFAULT_TIMEOUT_S = float(os.environ.get("DAPO_WANDB_TIMEOUT_S", "0") or 0)
INIT_TIMEOUT_S = _DEFAULT_TIMEOUT_S or 240.0
"""Seconds `wandb.init` may take (offline W&B took from 4 s to over 2 minutes on a loaded machine)."""
LOG_TIMEOUT_S = _DEFAULT_TIMEOUT_S or 60.0
FINISH_TIMEOUT_S = _DEFAULT_TIMEOUT_S or 240.0
FOLLOW_BLOCK_MS = 1000


class WandbTimeout(RuntimeError):
    """A W&B call did not return within its deadline."""


async def bounded(call: Callable[[], T], timeout_s: float, what: str) -> T:
    """`call()` in a daemon thread, awaited at most `timeout_s` (then WandbTimeout; the thread is left)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = call()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop ended while the call was stuck: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name=f"dapo-wandb-{what}", daemon=True).start()
    try:
        return await asyncio.wait_for(done, timeout_s)
    except TimeoutError:
        raise WandbTimeout(f"W&B {what} did not return within {timeout_s:g} s") from None


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
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._wandb_run = await bounded(self._init, INIT_TIMEOUT_S, "init")
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
        if rows and self._wandb_run is not None:
            try:
                await bounded(lambda: self._log_sync(rows), LOG_TIMEOUT_S, "log")
            except WandbTimeout as exc:
                log.error("run %s: %s; W&B logging stops, the run goes on", self.run_id, exc)
                self._wandb_run = None

    def _log_sync(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self._wandb_run.log(_loggable(row), step=row["step"])

    async def _follow(self) -> None:
        # Stopped by the flag, not by cancelling: redis-py's blocking XREAD, cancelled, held the close
        # for about 30 s here.
        while not self._stopping.is_set():
            for record in await self._read(block_ms=FOLLOW_BLOCK_MS):
                await self._log(self.buffer.add(record))

    async def close(self) -> None:
        if self._task is not None:
            self._stopping.set()
            try:
                await asyncio.wait_for(self._task, FOLLOW_BLOCK_MS / 1000 + LOG_TIMEOUT_S + 5)
            except TimeoutError:
                log.error("run %s: the W&B follower did not stop; closing without it", self.run_id)
        while records := await self._read(block_ms=None):
            for record in records:
                await self._log(self.buffer.add(record))
        await self._log(self.buffer.flush())
        if self._wandb_run is None:
            return
        try:
            await bounded(self._wandb_run.finish, FINISH_TIMEOUT_S, "finish")
        except WandbTimeout as exc:
            log.error("run %s: %s; its W&B files may be incomplete", self.run_id, exc)


async def start_follower(run_id: str, config: RunConfig, redis: aioredis.Redis) -> WandbFollower | None:
    """A started follower when `logger.wandb_enabled`; None otherwise or when W&B cannot start (said why)."""
    if not config.logger.wandb_enabled:
        return None
    follower = WandbFollower(run_id, config, redis)
    try:
        await follower.start()
    except WandbTimeout as exc:
        log.error("run %s: %s; the run goes on without W&B logging", run_id, exc)
        return None
    except Exception as exc:  # logging must not stop training; the reason is reported
        log.error("run %s: W&B logging could not start: %s", run_id, exc)
        return None
    return follower

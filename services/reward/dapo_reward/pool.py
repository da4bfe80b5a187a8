"""A pool of verifier worker processes with a per-item deadline that really holds.

math-verify's own timeouts use SIGALRM, which works only in a process's main thread: each worker is a
process whose main thread verifies one item at a time. Items go to a worker in chunks (one pipe
message and one thread hand-off for several items, the per-item round trip was most of the service's
overhead when an item takes a millisecond or two); the worker answers item by item, so every item still
has its own hard deadline (timeout + grace from the moment the worker reaches it): a worker that has not
answered by then is killed (SIGKILL) and replaced, and the item scores wrong with error `timeout`. A
worker that dies while verifying (killed, crashed, out of memory) is replaced and its item answers with
error `crash`. Items of a chunk that a worker had not reached go back to the front of the queue; so do
they as soon as an item runs slow, so that one hostile item does not hold the items queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dapo_reward.verifiers import verify_item

Verdict = tuple[bool, str, str]  # (correct, extracted, error)
Options = tuple[tuple[str, Any], ...]  # grading options as sorted (name, value) pairs: hashable
JobArgs = tuple[str, str, str, int, Options]  # (verifier, response, ground truth, timeout s, options)

MAX_CHUNK = 16


def _worker_main(conn: Connection) -> None:
    # math-verify logs the whole input on a timeout (megabytes of hostile text): keep workers quiet.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        for verifier, response, ground_truth, timeout_s, options in chunk:
            conn.send(verify_item(verifier, response, ground_truth, timeout_s, dict(options)))


@dataclass
class _Worker:
    process: Any
    conn: Connection


@dataclass
class _Job:
    args: JobArgs
    future: asyncio.Future[Verdict]


@dataclass
class PoolStats:
    timeouts: int = 0
    crashes: int = 0
    replaced: int = 0
    done: int = 0


class WorkerPool:
    def __init__(
        self, num_workers: int, timeout_s: int, grace_s: float = 0.5, max_chunk: int = MAX_CHUNK
    ) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if int(timeout_s) != timeout_s or timeout_s < 1:
            raise ValueError(f"timeout_s must be a whole number of seconds >= 1, got {timeout_s}")
        if max_chunk < 1:
            raise ValueError(f"max_chunk must be >= 1, got {max_chunk}")
        self.num_workers = num_workers
        self.timeout_s = int(timeout_s)
        self.grace_s = grace_s
        self.max_chunk = max_chunk
        # An item slower than this hands the rest of its chunk back to the queue.
        self.slow_s = min(0.25, self.timeout_s / 4)
        self.stats = PoolStats()
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["dapo_reward.verifiers", "math_verify", "sympy"])
        self._workers: list[_Worker | None] = [None] * num_workers
        self._pending: deque[_Job] = deque()
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="reward-pool")

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child,), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w is not None]

    def num_alive(self) -> int:
        return sum(1 for w in self._workers if w is not None and w.process.is_alive())

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        spawned = await asyncio.gather(
            *(self._loop.run_in_executor(self._executor, self._spawn) for _ in range(self.num_workers))
        )
        self._workers = list(spawned)
        self._tasks = [asyncio.create_task(self._drive(i)) for i in range(self.num_workers)]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self._workers:
            if worker is not None:
                self._kill(worker)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            worker.process.kill()
        worker.process.join(5)
        worker.conn.close()

    async def verify(self, verifier: str, response: str, ground_truth: str, options: Options = ()) -> Verdict:
        """`options`: math-verify's grading options (math-verify's defaults where absent)."""
        assert self._loop is not None and self._wakeup is not None, "WorkerPool.start() was not awaited"
        future: asyncio.Future[Verdict] = self._loop.create_future()
        self._pending.append(_Job((verifier, response, ground_truth, self.timeout_s, options), future))
        self._wakeup.set()
        return await future

    def _requeue_front(self, jobs: list[_Job]) -> None:
        """Event-loop side: jobs a worker did not (or may not soon) reach go first in line again."""
        assert self._wakeup is not None
        self._pending.extendleft(reversed([job for job in jobs if not job.future.done()]))
        if self._pending:
            self._wakeup.set()

    def _finish(self, job: _Job, verdict: Verdict) -> None:
        """Event-loop side; a job handed back and answered by another worker first keeps that answer."""
        if not job.future.done():
            self.stats.done += 1
            if verdict[2] == "timeout":
                self.stats.timeouts += 1
            elif verdict[2] == "crash":
                self.stats.crashes += 1
            job.future.set_result(verdict)

    async def _take(self) -> list[_Job]:
        """The next chunk: a fair share of what is waiting, at most max_chunk; waits 0.5 s at most."""
        assert self._wakeup is not None
        while True:
            while self._pending and self._pending[0].future.done():  # answered elsewhere, or cancelled
                self._pending.popleft()
            if self._pending:
                break
            self._wakeup.clear()
            await asyncio.wait_for(self._wakeup.wait(), timeout=0.5)
        size = min(self.max_chunk, math.ceil(len(self._pending) / self.num_workers))
        chunk: list[_Job] = []
        while self._pending and len(chunk) < size:
            job = self._pending.popleft()
            if not job.future.done():
                chunk.append(job)
        return chunk

    def _run_chunk(self, worker: _Worker, chunk: list[_Job]) -> bool:
        """Blocking (in an executor thread): run a chunk on one worker; False if the worker must go."""
        loop = self._loop
        assert loop is not None
        handed_back = False

        def post(fn: Callable[..., None], *args: Any) -> None:
            loop.call_soon_threadsafe(fn, *args)

        try:
            worker.conn.send([job.args for job in chunk])
        except (OSError, BrokenPipeError):
            post(self._requeue_front, chunk)
            return False
        deadline = self.timeout_s + self.grace_s
        for i, job in enumerate(chunk):
            rest = chunk[i + 1 :]
            try:
                first_wait = min(self.slow_s, deadline) if rest and not handed_back else deadline
                answered = worker.conn.poll(first_wait)
                if not answered and first_wait < deadline:  # slow: let other workers take the rest
                    post(self._requeue_front, rest)
                    handed_back = True
                    answered = worker.conn.poll(deadline - first_wait)
                if not answered:
                    post(self._finish, job, (False, "", "timeout"))
                    if not handed_back:
                        post(self._requeue_front, rest)
                    return False
                verdict: Verdict = worker.conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                post(self._finish, job, (False, "", "crash"))
                if not handed_back:
                    post(self._requeue_front, rest)
                return False
            post(self._finish, job, verdict)
        return True

    async def _drive(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                chunk = await self._take()
            except TimeoutError:  # idle: replace a worker that died meanwhile, so the pool stays full
                idle = self._workers[index]
                if idle is None or not idle.process.is_alive():
                    await loop.run_in_executor(self._executor, self._replace, index)
                continue
            worker = self._workers[index]
            if worker is None or not worker.process.is_alive():
                worker = await loop.run_in_executor(self._executor, self._replace, index)
            healthy = await loop.run_in_executor(self._executor, self._run_chunk, worker, chunk)
            if not healthy:  # the worker hung or died: replace it
                await loop.run_in_executor(self._executor, self._replace, index)

    def _replace(self, index: int) -> _Worker:
        old = self._workers[index]
        if old is not None:
            self._kill(old)
            self.stats.replaced += 1
        self._workers[index] = self._spawn()
        return self._workers[index]  # type: ignore[return-value]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))

"""A pool of verifier worker processes with a per-item deadline that really holds.

math-verify's own timeouts use SIGALRM, which works only in a process's main thread: each worker is a
process whose main thread verifies one item at a time. The parent gives every item a hard deadline
(timeout + grace): a worker that has not answered by then is killed (SIGKILL) and replaced, and the
item scores wrong with error `timeout`. A worker that dies while verifying (killed, crashed, out of
memory) is replaced and its item answers with error `crash`. Other items are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from dapo_reward.verifiers import verify_item

Verdict = tuple[bool, str, str]  # (correct, extracted, error)


def _worker_main(conn: Connection) -> None:
    # math-verify logs the whole input on a timeout (megabytes of hostile text): keep workers quiet.
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        conn.send(verify_item(*job))


@dataclass
class _Worker:
    process: Any
    conn: Connection


@dataclass
class PoolStats:
    timeouts: int = 0
    crashes: int = 0
    replaced: int = 0
    done: int = 0


class WorkerPool:
    def __init__(self, num_workers: int, timeout_s: int, grace_s: float = 0.5) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if int(timeout_s) != timeout_s or timeout_s < 1:
            raise ValueError(f"timeout_s must be a whole number of seconds >= 1, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = int(timeout_s)
        self.grace_s = grace_s
        self.stats = PoolStats()
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["dapo_reward.verifiers", "math_verify", "sympy"])
        self._workers: list[_Worker | None] = [None] * num_workers
        self._queue: asyncio.Queue[tuple[tuple[str, str, str, int], asyncio.Future[Verdict]]] | None = None
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
        loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        spawned = await asyncio.gather(
            *(loop.run_in_executor(self._executor, self._spawn) for _ in range(self.num_workers))
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

    async def verify(self, verifier: str, response: str, ground_truth: str) -> Verdict:
        assert self._queue is not None, "WorkerPool.start() was not awaited"
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        await self._queue.put(((verifier, response, ground_truth, self.timeout_s), future))
        return await future

    def _run_one(self, worker: _Worker, job: tuple[str, str, str, int]) -> Verdict | str:
        """Blocking: send the job and wait for the answer until the deadline (in an executor thread)."""
        try:
            worker.conn.send(job)
            if not worker.conn.poll(self.timeout_s + self.grace_s):
                return "timeout"
            verdict: Verdict = worker.conn.recv()
            return verdict
        except (EOFError, OSError, BrokenPipeError):
            return "crash"

    async def _drive(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        assert self._queue is not None
        while True:
            try:
                job, future = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:  # idle: replace a worker that died meanwhile, so the pool stays full
                idle = self._workers[index]
                if idle is None or not idle.process.is_alive():
                    await loop.run_in_executor(self._executor, self._replace, index)
                continue
            worker = self._workers[index]
            if worker is None or not worker.process.is_alive():
                worker = await loop.run_in_executor(self._executor, self._replace, index)
            outcome = await loop.run_in_executor(self._executor, self._run_one, worker, job)
            if isinstance(outcome, str):  # the worker hung or died: replace it, the item scores wrong
                if outcome == "timeout":
                    self.stats.timeouts += 1
                else:
                    self.stats.crashes += 1
                await loop.run_in_executor(self._executor, self._replace, index)
                outcome = (False, "", outcome)
            self.stats.done += 1
            if not future.done():
                future.set_result(outcome)

    def _replace(self, index: int) -> _Worker:
        old = self._workers[index]
        if old is not None:
            self._kill(old)
            self.stats.replaced += 1
        self._workers[index] = self._spawn()
        return self._workers[index]  # type: ignore[return-value]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))

"""The verifier worker pool: chunks of items per worker, each item still under its own deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from dapo_reward.pool import WorkerPool

SLOW = "\\boxed{2^{2^{30}}}"  # keeps a worker busy until the timeout


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def timed(
    pool: WorkerPool, response: str, truth: str, start: float
) -> tuple[float, tuple[bool, str, str]]:
    verdict = await pool.verify("math_verify", response, truth)
    return time.monotonic() - start, verdict


def test_bad_pool_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        WorkerPool(0, 2)
    with pytest.raises(ValueError, match="timeout_s"):
        WorkerPool(1, 0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chunk"):
        WorkerPool(1, 2, max_chunk=0)


def test_items_behind_a_slow_item_are_handed_to_another_worker() -> None:
    async def main() -> list[tuple[float, tuple[bool, str, str]]]:
        pool = WorkerPool(2, timeout_s=2)
        await pool.start()
        try:
            await pool.verify("math_verify", "\\boxed{1}", "1")  # both workers warm
            start = time.monotonic()
            # 4 items, 2 workers: the first worker's chunk is [slow, clean], the second's [clean, clean]
            results = await asyncio.gather(
                timed(pool, SLOW, "1", start),
                *(timed(pool, f"\\boxed{{{i}}}", str(i), start) for i in range(3)),
            )
            assert pool.stats.done == 5
            return results
        finally:
            await pool.close()

    (slow_s, slow), *clean = run(main())
    assert slow[0] is False and slow_s >= 1.0
    for elapsed, verdict in clean:
        assert verdict == (True, verdict[1], "") and verdict[1] != ""
        assert elapsed < 1.0, f"a clean item waited {elapsed:.2f} s behind the slow one"


def test_many_items_in_chunks_answer_each_item_in_order() -> None:
    async def main() -> list[tuple[bool, str, str]]:
        pool = WorkerPool(2, timeout_s=2, max_chunk=4)
        await pool.start()
        try:
            verdicts = await asyncio.gather(
                *(pool.verify("math_verify", f"\\boxed{{{i}}}", str(i + (i % 5 == 0))) for i in range(60))
            )
            assert pool.stats.done == 60 and pool.stats.timeouts == 0 and pool.stats.crashes == 0
            return list(verdicts)
        finally:
            await pool.close()

    verdicts = run(main())
    assert [v[0] for v in verdicts] == [i % 5 != 0 for i in range(60)]
    assert [v[1] for v in verdicts] == [str(i) for i in range(60)]


def test_a_hung_worker_is_killed_at_the_deadline_and_the_rest_of_its_chunk_still_answers() -> None:
    async def main() -> tuple[list[tuple[bool, str, str]], float]:
        pool = WorkerPool(1, timeout_s=1, grace_s=0.2, max_chunk=8)
        pool.slow_s = 5.0  # no hand-back: the rest of the chunk must come back after the kill
        await pool.start()
        try:
            [pid] = pool.worker_pids()
            os.kill(pid, signal.SIGSTOP)  # the worker takes the chunk's message and never answers
            start = time.monotonic()
            verdicts = await asyncio.gather(
                *(pool.verify("math_verify", f"\\boxed{{{i}}}", str(i)) for i in range(5))
            )
            elapsed = time.monotonic() - start
            assert pool.stats.timeouts == 1 and pool.stats.replaced == 1 and pool.stats.done == 5
            assert pool.worker_pids() != [pid]
            return list(verdicts), elapsed
        finally:
            await pool.close()

    (first, *rest), elapsed = run(main())
    assert first == (False, "", "timeout")
    assert all(v[0] and v[2] == "" for v in rest)
    assert 1.2 <= elapsed < 5.0

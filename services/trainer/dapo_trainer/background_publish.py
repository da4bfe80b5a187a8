"""Publishing a policy version off the trainer's critical path (asynchronous runs).

With `grpo.max_staleness` above 0 the next batch is usually queued when a batch is done, so the trainer
need not wait while a version is pushed to the rollout servers (encode, transfer, the servers' reload):
rank 0 hands the version to one background thread and starts the next batch. Versions still go out
one at a time and in order (a new one waits for the one before), the policy-version key is set only
once the push is done (what the controller waits for), and a failure surfaces on the trainer's next
publish or at the end of the run. The weights it is handed must not share storage with the parameters
(the next optimizer step changes those in place): `gather_full_state_dict` gives copies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class BackgroundPublisher:
    """One publish at a time in a worker thread; `submit` waits for the previous one first."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish")
        self._pending: Future[float] | None = None
        self.last_duration_s: float | None = None
        """How long the last finished publish took in the background (None before the first)."""

    def wait(self) -> None:
        """Until the publish in flight is done; re-raises its exception."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.last_duration_s = pending.result()

    def submit(
        self,
        publish: Callable[[int, dict[str, torch.Tensor]], None],
        version: int,
        full: dict[str, torch.Tensor],
    ) -> None:
        self.wait()

        def run() -> float:
            started = time.perf_counter()
            publish(version, full)
            return time.perf_counter() - started

        self._pending = self._executor.submit(run)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._executor.shutdown(wait=True)

"""The trainer's background publisher: versions go out one at a time and in order, each with the
weights it was given (not what training later wrote into the same tensors), and a failure surfaces."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from dapo_trainer.background_publish import BackgroundPublisher


def test_versions_go_out_in_order_with_the_weights_of_their_step() -> None:
    published: list[tuple[int, float, str]] = []
    in_flight = threading.Semaphore(1)

    def publish(version: int, full: dict[str, torch.Tensor]) -> None:
        assert in_flight.acquire(blocking=False), "two publishes at once"
        time.sleep(0.05)  # the push takes a while; training goes on meanwhile
        published.append((version, float(full["w"][0]), threading.current_thread().name))
        in_flight.release()

    publisher = BackgroundPublisher()
    try:
        for version in range(1, 6):
            # Each version's own gathered copy (gather_full_state_dict never hands out the parameters).
            publisher.submit(publish, version, {"w": torch.full((4,), float(version))})
        publisher.wait()
    finally:
        publisher.close()
    assert [(v, w) for v, w, _ in published] == [(v, float(v)) for v in range(1, 6)]
    assert all(name.startswith("publish") for _, _, name in published)  # off the caller's thread
    assert publisher.last_duration_s is not None and publisher.last_duration_s >= 0.05


def test_a_failed_publish_surfaces_on_the_next_one_and_on_close() -> None:
    published: list[int] = []

    def fail(version: int, full: dict[str, torch.Tensor]) -> None:
        raise RuntimeError(f"Redis gone while publishing version {version}")

    publisher = BackgroundPublisher()
    publisher.submit(fail, 3, {"w": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="publishing version 3"):
        publisher.submit(lambda v, _: published.append(v), 4, {"w": torch.zeros(1)})
    assert published == []  # nothing goes out after a failed version
    publisher.submit(fail, 5, {"w": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="publishing version 5"):
        publisher.close()

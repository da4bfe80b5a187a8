"""The trainer's Prometheus metrics: one class on a registry of its own, like every service's; an applied
batch's record sets them, and `serve` exposes them over HTTP."""

from __future__ import annotations

import httpx
from dapo_trainer.metrics import TrainerMetrics

from dapo.local_redis import free_port


def test_a_step_record_sets_the_metrics_and_serve_exposes_them() -> None:
    metrics = TrainerMetrics()
    record = {
        "train/loss": 0.25,
        "train/tokens_per_s": 1500.0,
        "train/num_optimizer_steps": 2.0,
        "time/forward": 0.3,
    }
    metrics.observe_step(4, record)
    metrics.observe_step(5, {**record, "train/loss": 0.125})
    value = metrics.registry.get_sample_value
    assert value("dapo_trainer_policy_version") == 5
    assert value("dapo_trainer_batches_total") == 2
    assert value("dapo_trainer_optimizer_steps_total") == 4
    assert value("dapo_trainer_loss") == 0.125
    assert value("dapo_trainer_step_part_seconds_count", {"part": "forward"}) == 2
    assert TrainerMetrics().registry.get_sample_value("dapo_trainer_batches_total") == 0  # its own registry

    port = free_port()
    metrics.serve(port, "127.0.0.1")
    try:
        metrics.serve(port, "127.0.0.1")  # a second run in the same process: served once
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        metrics.close()
    assert "dapo_trainer_policy_version 5.0" in text and "dapo_trainer_push_failures_total 0.0" in text

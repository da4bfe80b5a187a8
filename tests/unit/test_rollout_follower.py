"""The rollout server's PublisherFollower against a real WeightPublisher on loopback, with a stand-in
engine (no vLLM here): it fetches newer versions of the served run, and any version of another run (every
run counts from 0, so the next run's version 0 must replace the previous run's version 40)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from dapo_rollout.follower import PublisherFollower
from dapo_rollout.weight_update import WeightUpdater

from dapo.weight_publisher import WeightPublisher
from dapo.weights import TensorBytes

SPECS = {"w": ("float32", (8, 4))}


def tensors(seed: int) -> list[TensorBytes]:
    data = np.random.default_rng(seed).standard_normal((8, 4)).astype(np.float32).tobytes()
    return [TensorBytes("w", "float32", (8, 4), memoryview(data))]


class FakeEngine:
    def __init__(self, version: int, run_id: str) -> None:
        self.version = version
        self.run_id = run_id
        self.applied: list[tuple[str, int, bytes]] = []

    async def apply_weights(self, version: int, weights_dir: str, run_id: str = "") -> None:
        from safetensors.numpy import load_file

        loaded = load_file(str(Path(weights_dir) / "model.safetensors"))["w"].tobytes()
        self.applied.append((run_id, version, loaded))
        self.version, self.run_id = version, run_id


def test_the_follower_fetches_newer_versions_and_any_version_of_another_run(tmp_path: Path) -> None:
    publisher = WeightPublisher(host="127.0.0.1", port=0).start()

    async def scenario() -> None:
        engine = FakeEngine(40, "run-a")  # still serving the previous run's last version
        updates: list[tuple[str, int]] = []

        async def on_update() -> None:  # the server refreshes its health here
            updates.append((engine.run_id, engine.version))

        updater = WeightUpdater(engine, SPECS, str(tmp_path))
        follower = PublisherFollower(publisher.address, updater, on_update=on_update)
        try:
            assert not await follower.poll_once()  # nothing published yet
            publisher.publish(40, tensors(40), run_id="run-a")
            assert not await follower.poll_once()  # that is what it serves already
            assert engine.applied == []

            publisher.publish(0, tensors(0), run_id="run-b")  # the next run: a LOWER version
            assert await follower.poll_once()
            assert engine.applied == [("run-b", 0, bytes(tensors(0)[0].data))]
            assert (engine.run_id, engine.version) == ("run-b", 0)
            assert not await follower.poll_once()

            publisher.publish(1, tensors(1), run_id="run-b")  # within the run: newer versions
            assert await follower.poll_once()
            assert (engine.run_id, engine.version) == ("run-b", 1)
            assert engine.applied[-1][2] == bytes(tensors(1)[0].data)
            assert len(engine.applied) == 2
            assert updates == [("run-b", 0), ("run-b", 1)]
        finally:
            await follower.close()
            await updater.close()

    try:
        asyncio.run(scenario())
    finally:
        publisher.stop()
    assert list(tmp_path.iterdir()) == []

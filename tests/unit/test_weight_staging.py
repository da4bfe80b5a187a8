"""The rollout server's staging: verified tensors land in a safetensors file that loads back identically,
and a refused update leaves nothing behind. No vLLM needed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from dapo_rollout.weight_update import ShmStagingAssembler, StagingFile, StaleVersionError, WeightUpdater

from dapo.weights import TensorBytes, WeightUpdateError, encode_update
from tests.conftest import require_module

SPECS = {"w": ("float32", (16, 8)), "h": ("float16", (5,)), "e": ("float32", (0,))}


def tensors(seed: int) -> list[TensorBytes]:
    rng = np.random.default_rng(seed)
    return [
        TensorBytes(
            "w", "float32", (16, 8), memoryview(rng.standard_normal((16, 8)).astype(np.float32).tobytes())
        ),
        TensorBytes("h", "float16", (5,), memoryview(rng.standard_normal(5).astype(np.float16).tobytes())),
        TensorBytes("e", "float32", (0,), memoryview(b"")),
    ]


def test_staged_file_loads_back_with_safetensors(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    staging = StagingFile(SPECS, str(tmp_path))
    for seed in (3, 4):  # the second update reuses the file, whatever the manifest's order
        assembler = ShmStagingAssembler(SPECS, staging)
        messages = list(encode_update(seed, tensors(seed), chunk_bytes=64))
        for message in messages if seed == 3 else [messages[0], *reversed(messages[1:])]:
            assembler.add(message)
        directory = assembler.seal()
        loaded = load_file(str(Path(directory) / "model.safetensors"))
        for t in tensors(seed):
            assert loaded[t.name].shape == t.shape and loaded[t.name].tobytes() == bytes(t.data)
        assembler.release()
        assert [p.name for p in tmp_path.iterdir()] == [Path(directory).name]
    staging.close()
    assert list(tmp_path.iterdir()) == []


def test_staging_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = tmp_path / f"dapo-weights-{dead.stdout.strip()}-abc"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"x")
    alive = tmp_path / "dapo-weights-1-abc"  # pid 1 always runs
    alive.mkdir()
    staging = StagingFile(SPECS, str(tmp_path))
    staging.open()
    assert not orphan.exists() and alive.exists()
    staging.close()


class FakeEngine:
    def __init__(self, version: int, run_id: str = "") -> None:
        self.version = version
        self.run_id = run_id
        self.applied: list[tuple[int, dict]] = []
        self.applied_runs: list[str] = []

    async def apply_weights(self, version: int, weights_dir: str, run_id: str = "") -> None:
        from safetensors.numpy import load_file

        self.applied.append((version, load_file(str(Path(weights_dir) / "model.safetensors"))))
        self.applied_runs.append(run_id)
        self.version, self.run_id = version, run_id


async def stream(messages):
    for message in messages:
        yield message


def test_updater_applies_new_versions_and_leaves_no_files_once_closed(tmp_path: Path) -> None:
    engine = FakeEngine(0)
    updater = WeightUpdater(engine, SPECS, str(tmp_path))
    result = asyncio.run(updater.update(stream(encode_update(1, tensors(1)))))
    assert result.is_applied and result.version == 1 and engine.version == 1
    assert engine.applied[0][1]["w"].tobytes() == bytes(tensors(1)[0].data)
    asyncio.run(updater.close())
    assert list(tmp_path.iterdir()) == []


def test_updater_acknowledges_the_served_version_and_refuses_older_ones(tmp_path: Path) -> None:
    engine = FakeEngine(5)
    updater = WeightUpdater(engine, SPECS, str(tmp_path))
    result = asyncio.run(updater.update(stream(encode_update(5, tensors(1)))))
    assert not result.is_applied and result.version == 5 and engine.applied == []
    with pytest.raises(StaleVersionError, match="version 4 is older than the served version 5"):
        asyncio.run(updater.update(stream(encode_update(4, tensors(1)))))


def test_versions_are_ordered_within_a_run_and_another_run_replaces_whatever_its_version(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(40, run_id="run-a")
    updater = WeightUpdater(engine, SPECS, str(tmp_path))
    # The next run on the same server starts again at version 0: applied, although 0 < 40.
    result = asyncio.run(updater.update(stream(encode_update(0, tensors(7), run_id="run-b"))))
    assert result.is_applied and (result.version, result.run_id) == (0, "run-b")
    assert (engine.version, engine.run_id) == (0, "run-b") and engine.applied_runs == ["run-b"]
    assert engine.applied[-1][1]["w"].tobytes() == bytes(tensors(7)[0].data)
    # Within run-b the usual order holds: equal is acknowledged, newer applied, older refused.
    again = asyncio.run(updater.update(stream(encode_update(0, tensors(8), run_id="run-b"))))
    assert not again.is_applied and (again.version, again.run_id) == (0, "run-b")
    newer = asyncio.run(updater.update(stream(encode_update(2, tensors(2), run_id="run-b"))))
    assert newer.is_applied and engine.version == 2
    with pytest.raises(StaleVersionError, match="version 1 is older than the served version 2"):
        asyncio.run(updater.update(stream(encode_update(1, tensors(1), run_id="run-b"))))
    # run-a's version 40 is not "newer": it is another run, so it is applied too (the trainer serves one run
    # at a time; whatever it pushes last is what the controller asked for).
    back = asyncio.run(updater.update(stream(encode_update(40, tensors(4), run_id="run-a"))))
    assert back.is_applied and (engine.version, engine.run_id) == (40, "run-a")
    assert engine.applied_runs == ["run-b", "run-b", "run-a"]


def test_a_refused_update_leaves_the_engine_untouched_and_the_next_one_applies(tmp_path: Path) -> None:
    engine = FakeEngine(0)
    updater = WeightUpdater(engine, SPECS, str(tmp_path))
    messages = list(encode_update(1, tensors(1), chunk_bytes=64))
    with pytest.raises(WeightUpdateError, match="'h': received 0 of 10 bytes"):
        asyncio.run(updater.update(stream(messages[:-2])))
    with pytest.raises(WeightUpdateError, match="must start with its manifest"):
        asyncio.run(updater.update(stream(messages[1:])))
    assert engine.applied == [] and engine.version == 0
    result = asyncio.run(updater.update(stream(messages)))  # the same staging file, partly written
    assert result.is_applied and engine.applied[0][1]["h"].tobytes() == bytes(tensors(1)[1].data)
    asyncio.run(updater.close())
    assert list(tmp_path.iterdir()) == []


def test_expected_tensors_from_the_config_equal_the_checkpoints(tiny_model_dir: Path, tmp_path: Path) -> None:
    require_module("transformers", "the train extra installs it")
    import shutil

    from dapo_rollout.weight_update import expected_specs_from_dir

    from_checkpoint = expected_specs_from_dir(tiny_model_dir)
    assert from_checkpoint["lm_head.weight"] == ("float32", (512, 256))
    architecture_only = tmp_path / "arch"
    architecture_only.mkdir()
    shutil.copy(tiny_model_dir / "config.json", architecture_only / "config.json")
    assert expected_specs_from_dir(architecture_only) == from_checkpoint
    assert set(expected_specs_from_dir(architecture_only, "bfloat16").values()) == {
        ("bfloat16", shape) for _, shape in from_checkpoint.values()
    }


def test_the_engine_side_reads_every_staged_tensor_without_a_copy(tmp_path: Path) -> None:
    import torch
    from dapo_rollout.worker_extension import mapped_tensors

    staging = StagingFile(SPECS, str(tmp_path))
    assembler = ShmStagingAssembler(SPECS, staging)
    for message in encode_update(5, tensors(5), chunk_bytes=64):
        assembler.add(message)
    path = Path(assembler.seal()) / "model.safetensors"
    got = dict(mapped_tensors(path))
    assert sorted(got) == sorted(SPECS)
    for t in tensors(5):
        assert tuple(got[t.name].shape) == t.shape and got[t.name].numpy().tobytes() == bytes(t.data)
    assert got["e"].dtype == torch.float32 and got["e"].numel() == 0  # empty tensors too
    # a view, not a copy: a byte written through the file shows in the tensor
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 10)  # the last tensor laid out is "e" (0 bytes), before it "h" (10)
        f.write(b"\x00" * 10)
    assert got["h"].numpy().tobytes() == b"\x00" * 10
    assembler.release()
    staging.close()

"""The trainer's ledger, learning-rate warm-up and checkpoint discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
from dapo_trainer.checkpoint import STATE_FILE, complete_checkpoints
from dapo_trainer.ledger import Ledger, LedgerEntry
from dapo_trainer.optim import warmup_factor


def test_ledger_round_trips_and_refuses_a_batch_twice() -> None:
    ledger = Ledger()
    ledger.add(LedgerEntry("a", 1, 0, "1-0"))
    ledger.add(LedgerEntry("b", 2, 1, "2-0"))
    restored = Ledger.from_json(ledger.to_json())
    assert "a" in restored and "b" in restored and "c" not in restored
    assert restored.version_of("b") == 2
    with pytest.raises(ValueError, match="batch a is already in the ledger"):
        restored.add(LedgerEntry("a", 3, 2, "3-0"))


def test_warmup_is_linear_then_constant() -> None:
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_only_committed_checkpoints_count(tmp_path: Path) -> None:
    for name in ("step_2", "step_10", "step_12.tmp", "step_4"):
        (tmp_path / name).mkdir()
    for name in ("step_2", "step_10", "step_12.tmp"):
        (tmp_path / name / STATE_FILE).write_text("{}")
    # step_4 has no state file (cut off) and step_12.tmp was never renamed.
    assert [v for v, _ in complete_checkpoints(tmp_path)] == [2, 10]
    assert complete_checkpoints(tmp_path / "missing") == []


def test_node_directories_and_what_each_rank_can_restore(tmp_path: Path) -> None:
    import json

    import torch
    from dapo_trainer.checkpoint import REPLICATED_FILE, checkpoint_root, restorable_versions
    from dapo_trainer.distributed import DistContext

    assert checkpoint_root("/ckpt/node{node_rank}/x", "run", 3) == Path("/ckpt/node3/x/run")
    assert checkpoint_root("/results/checkpoints", "run", 3) == Path("/results/checkpoints/run")
    # Saved by two ranks: step_2 holds rank 1's files, step_4 only rank 0's (another node's directory),
    # step_6 lacks the replicated entries (cut off before they were written).
    for version, ranks in ((2, [0, 1]), (4, [0]), (6, [0, 1])):
        path = tmp_path / f"step_{version}"
        path.mkdir()
        (path / STATE_FILE).write_text(json.dumps({"world_size": 2}))
        if version != 6:
            (path / REPLICATED_FILE).write_bytes(b"")
        for rank in ranks:
            (path / f"rng_rank{rank}.pt").write_bytes(b"")

    def ctx(rank: int) -> DistContext:
        return DistContext(rank, 2, 0, torch.device("cpu"), "gloo", node_rank=rank)

    assert restorable_versions(tmp_path, ctx(0)) == [2, 4]
    assert restorable_versions(tmp_path, ctx(1)) == [2]

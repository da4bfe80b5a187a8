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

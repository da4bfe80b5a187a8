"""The reasoning task's run (`examples/configs/tiny_reasoning_cpu.yaml` on the shipped
examples/tiny-reasoning-model) keeps its answers long and exercises overlong shaping: a few real steps
(local processes, real services) whose sampled answers average tens of tokens and include truncated ones,
and whose batches the soft overlong penalty and the overlong filter both acted on. If the task or its
warm start collapsed to short answers, these metrics would read zero and the test fails.

The warm start samples 21-27-token solutions, plus re-checks of 34-49 tokens (bench/RESULTS.md,
"Ablations on the reasoning task"); the bounds below sit well inside that.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_learning import ROOT, launch, validation_accuracy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = ROOT / "examples" / "tiny-reasoning-model"
CONFIG = ROOT / "examples" / "configs" / "tiny_reasoning_cpu.yaml"
NUM_STEPS = 3


def test_answers_stay_long_and_the_overlong_penalty_fires(tmp_path: Path) -> None:
    launcher = launch(MODEL, tmp_path, config_file=CONFIG, num_steps=NUM_STEPS, num_val=32)
    try:
        launcher.submit()
        run = launcher.follow()
    finally:
        launcher.stop()
    assert run["status"] == "succeeded", run
    steps = [r for r in launcher.records if r.get("source") == "controller" and "train/response_length" in r]
    assert sorted(int(r["step"]) for r in steps) == list(range(NUM_STEPS)), steps
    lengths = [r["train/response_length"] for r in steps]
    print("sampled response length per step:", lengths)
    assert all(20 <= n <= 40 for n in lengths), lengths  # tens of tokens, within the budget of 40
    assert max(r["train/truncated_frac"] for r in steps) > 0, steps  # some answers run past the budget
    # The soft punishment lowered some trained rewards, and the filter masked truncated answers.
    assert all(r["train/overlong_penalty"] < 0 for r in steps), steps
    assert max(r["train/overlong_penalized_frac"] for r in steps) > 0.02, steps
    assert max(r["train/overlong_filtered_frac"] for r in steps) > 0, steps
    # Validation (greedy) answers are worked solutions too, graded by DAPO's Answer: rule.
    val = [r for r in launcher.records if "val/response_length" in r]
    assert val and all(r["val/response_length"] >= 20 for r in val), val
    accuracy = validation_accuracy(launcher.records)
    assert set(accuracy) == {0, NUM_STEPS}, accuracy
    assert accuracy[0] > 0.1, accuracy  # the warm start solves some: the Answer: line is read

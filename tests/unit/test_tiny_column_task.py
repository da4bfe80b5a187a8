"""The column-addition task: worked solutions, the forgot-to-carry bug, the re-check habit, the answer
line, and a short build of its (smaller) model, deterministic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from dapo.tiny.column_task import CHECK_FRACTION, final_answer, solution, warm_label, worked_answer
from dapo.tiny.task import Problem, no_carry_sum
from dapo.tiny.tasks import get_task


def test_solution_writes_one_line_per_column_with_the_carry() -> None:
    assert solution(37, 48) == (["7+8=15", "3+4+1=8"], "85")
    assert solution(85, 47) == (["5+7=12", "8+4+1=13"], "132")
    assert solution(12, 34) == (["2+4=6", "1+3=4"], "46")
    assert solution(37, 48, carry=False) == (["7+8=15", "3+4=7"], "75")
    for a in range(10, 100):
        for b in range(10, 100, 7):
            assert solution(a, b)[1] == str(a + b)
            assert solution(a, b, carry=False)[1] == no_carry_sum(a, b)
    with pytest.raises(ValueError, match="non-negative"):
        solution(-1, 5)


def test_worked_answer_and_the_answer_line() -> None:
    lines, answer = solution(37, 48)
    assert worked_answer(lines, answer) == "7+8=15\n3+4+1=8\nAnswer: 85"
    assert worked_answer(lines, answer, 1) == "7+8=15\n3+4+1=8\nCheck:\n7+8=15\nAnswer: 85"
    with pytest.raises(ValueError, match="check_lines"):
        worked_answer(lines, answer, 3)
    assert final_answer("7+8=15\nAnswer: 85") == "85"
    assert final_answer("Answer: 1\nCheck:\nAnswer:  85 ") == "85"  # the last one counts
    assert final_answer("7+8=15\n3+4+1=8") == ""  # truncated before the answer


def test_warm_labels_mix_the_bug_and_the_check_as_configured() -> None:
    rng = random.Random(0)
    carry = Problem(37, 48)
    labels = [warm_label(carry, rng, 0.6) for _ in range(4000)]
    wrong = sum(final_answer(label) == "75" for label in labels) / len(labels)
    checked = [label for label in labels if "Check:" in label]
    assert abs(wrong - 0.6) < 0.03
    assert abs(len(checked) / len(labels) - CHECK_FRACTION) < 0.03
    assert {label.count("\n") for label in checked} == {4, 5}  # one or two lines re-checked
    assert all(final_answer(label) in ("75", "85") for label in labels)
    # a problem without a carry is right whatever the bug draws
    assert {final_answer(warm_label(Problem(12, 34), rng, 1.0)) for _ in range(50)} == {"46"}


def test_unknown_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("multiplication")


def test_short_column_build_is_deterministic_and_uses_the_task_model(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from dapo.tiny.sft import WarmStartConfig, make_tiny_model

    short = WarmStartConfig(
        num_steps=2, batch_size=4, warmup_steps=1, decay_steps=0, num_eval_problems=4, num_eval_samples=2
    )
    build = {"config": short, "num_test": 50, "log": None, "num_threads": 1, "task": "column-addition"}
    first = make_tiny_model(tmp_path / "a", **build)
    make_tiny_model(tmp_path / "b", **build)
    assert (tmp_path / "a/model.safetensors").read_bytes() == (tmp_path / "b/model.safetensors").read_bytes()
    assert first["task"] == "column-addition" and first["eval_max_new_tokens"] == 40
    assert 0 < first["sampled_response_tokens"] <= 40 and 0 <= first["sampled_truncated_frac"] <= 1
    config = json.loads((tmp_path / "a/config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"]) == (128, 384)

"""The arithmetic task: problems, the forgot-to-carry labels, the seeded disjoint split, row format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dapo.data import load_prompts
from dapo.tiny.task import (
    NUM_PROBLEMS,
    Problem,
    all_problems,
    no_carry_sum,
    split_problems,
    to_row,
    write_task_data,
)


def test_problems() -> None:
    problems = all_problems()
    assert len(problems) == NUM_PROBLEMS == 8100
    assert len(set(problems)) == 8100
    assert Problem(37, 48).question == "What is 37+48?"
    assert Problem(37, 48).answer == "85"
    assert Problem(37, 48).has_carry and not Problem(31, 48).has_carry


def test_no_carry_sum() -> None:
    assert no_carry_sum(37, 48) == "75"
    assert no_carry_sum(85, 47) == "122"
    assert no_carry_sum(31, 48) == "79" == Problem(31, 48).answer  # no carry: same as the true sum
    with pytest.raises(ValueError, match="non-negative"):
        no_carry_sum(-1, 5)


def test_split_is_disjoint_complete_and_seeded() -> None:
    train, test = split_problems(seed=0, num_test=500)
    assert len(test) == 500 and len(train) == 7600
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(all_problems())
    assert split_problems(seed=0) == (train, test)
    assert split_problems(seed=1)[1] != test
    with pytest.raises(ValueError, match="num_test"):
        split_problems(num_test=0)


def test_rows_and_files(tmp_path: Path) -> None:
    row = to_row(Problem(37, 48), 3)
    assert row == {
        "data_source": "arithmetic",
        "prompt": [{"role": "user", "content": "What is 37+48?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "85"},
        "extra_info": {"index": 3},
    }
    train_path, test_path = write_task_data(tmp_path, seed=0, num_test=100)
    assert len(train_path.read_text().splitlines()) == 8000
    first = json.loads(test_path.read_text().splitlines()[0])
    assert first["extra_info"] == {"index": 0, "split": "test"}
    rows = load_prompts(test_path)
    assert len(rows) == 100 and rows[0].messages[0]["content"].startswith("What is ")
    assert {r.messages[0]["content"] for r in rows}.isdisjoint(
        {r.messages[0]["content"] for r in load_prompts(train_path)}
    )

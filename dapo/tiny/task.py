"""The synthetic task for the tiny model: two-digit addition ("What is 37+48?" -> "85").

Operands run from 10 to 99, so there are 8,100 problems. A seeded shuffle puts `num_test` of them in a
held-out test split and the rest in the training split; the two never overlap. Rows are written in the
verl/NeMo row format that `dapo.data` reads. The expected answer is the bare number followed by EOS,
which math-verify parses as it is.

`no_carry_sum` is the "forgot to carry" bug used by the supervised warm start: each column is added on
its own and the carry from the units is dropped (37+48 -> 75, 85+47 -> 122).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_OPERAND = 10
MAX_OPERAND = 99
NUM_PROBLEMS = (MAX_OPERAND - MIN_OPERAND + 1) ** 2
DATA_SOURCE = "arithmetic"


@dataclass(frozen=True)
class Problem:
    """One addition problem `a + b`."""

    a: int
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a}+{self.b}?"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def has_carry(self) -> bool:
        return (self.a % 10) + (self.b % 10) >= 10


def no_carry_sum(a: int, b: int) -> str:
    """Add column by column and forget the carry from the units: 37+48 -> "75", 85+47 -> "122"."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got a={a}, b={b}")
    return f"{a // 10 + b // 10}{(a % 10 + b % 10) % 10}"


def all_problems() -> list[Problem]:
    """Every problem, in a fixed order (a, then b)."""
    return [
        Problem(a, b)
        for a in range(MIN_OPERAND, MAX_OPERAND + 1)
        for b in range(MIN_OPERAND, MAX_OPERAND + 1)
    ]


def split_problems(seed: int = 0, num_test: int = 500) -> tuple[list[Problem], list[Problem]]:
    """A seeded train/test split of all problems with no overlap: (train, test)."""
    if not 1 <= num_test < NUM_PROBLEMS:
        raise ValueError(f"num_test must be in [1, {NUM_PROBLEMS - 1}], got {num_test}")
    problems = all_problems()
    random.Random(seed).shuffle(problems)
    return problems[num_test:], problems[:num_test]


def to_row(problem: Problem, index: int, split: str | None = None) -> dict[str, Any]:
    """A problem as a verl/NeMo row."""
    extra_info: dict[str, Any] = {"index": index}
    if split is not None:
        extra_info["split"] = split
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": problem.question}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": problem.answer},
        "extra_info": extra_info,
    }


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSONL (one compact JSON object a line, keys in a fixed order)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def write_task_data(out_dir: str | Path, seed: int = 0, num_test: int = 500) -> tuple[Path, Path]:
    """Write `train.jsonl` and `test.jsonl` of the split into `out_dir`; return their paths."""
    train, test = split_problems(seed, num_test)
    out = Path(out_dir)
    train_path = write_rows(out / "train.jsonl", (to_row(p, i, "train") for i, p in enumerate(train)))
    test_path = write_rows(out / "test.jsonl", (to_row(p, i, "test") for i, p in enumerate(test)))
    return train_path, test_path

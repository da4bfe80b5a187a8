"""The tiny tasks `dapo make-tiny-model --task NAME` builds, and what the warm start needs of each.

- `addition` (`dapo.tiny.task`, shipped in `examples/tiny-model`): 2-digit addition, the bare sum as the
  answer (3-4 tokens).
- `column-addition` (`dapo.tiny.column_task`, shipped in `examples/tiny-reasoning-model`): 2-digit
  addition worked column by column, then `Answer: N` (tens of tokens).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dapo.tiny import column_task, task
from dapo.tiny.task import Problem


@dataclass(frozen=True)
class TinyTask:
    name: str
    split_problems: Callable[[int, int], tuple[list[Problem], list[Problem]]]
    write_task_data: Callable[[Path, int, int], tuple[Path, Path]]
    warm_label: Callable[[Problem, random.Random, float], str]
    """A warm-start label of a problem (the RNG is drawn from as the label needs)."""
    final_answer: Callable[[str], str] | None
    """What evaluation compares with the ground truth; None: the whole stripped response."""
    eval_max_new_tokens: int
    """Generation budget of the warm start's evaluation (the run config's response budget)."""
    model_config: dict[str, Any] = field(default_factory=dict)
    """This task's settings of `model.MODEL_CONFIG` that differ (a smaller model trains faster here)."""
    build_threads: int = 2
    """torch threads of the shipped build (the same seed and thread count give the same bytes)."""
    warm_start: dict[str, Any] = field(default_factory=dict)
    """This task's settings of `WarmStartConfig` that differ from the defaults."""


def _addition_label(problem: Problem, rng: random.Random, no_carry_fraction: float) -> str:
    return task.no_carry_sum(problem.a, problem.b) if rng.random() < no_carry_fraction else problem.answer


TASKS: dict[str, TinyTask] = {
    "addition": TinyTask(
        name="addition",
        split_problems=task.split_problems,
        write_task_data=task.write_task_data,
        warm_label=_addition_label,
        final_answer=None,
        eval_max_new_tokens=8,
    ),
    "column-addition": TinyTask(
        name="column-addition",
        split_problems=column_task.split_problems,
        write_task_data=column_task.write_task_data,
        warm_label=column_task.warm_label,
        final_answer=column_task.final_answer,
        eval_max_new_tokens=40,
        build_threads=1,
        model_config={"hidden_size": 128, "intermediate_size": 384},
        warm_start={"num_steps": 500, "batch_size": 32, "no_carry_fraction": 0.6},
    ),
}


def get_task(name: str) -> TinyTask:
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]

"""The tiny reasoning task: 2-digit addition worked column by column, then `Answer: N`.

The problems, split and rows are the addition task's (`dapo.tiny.task`: "What is 37+48?", operands 10-99,
the same seeded split); only the answer differs. It is one line per column, units first, the carry
written into the next column's sum, then the final line the DAPO answer rule reads:

    7+8=15
    3+4+1=8
    Answer: 85

That is 21-27 tokens with EOS (every digit, `+`, `=` and newline is one token of the tiny tokenizer), so
responses run to tens of tokens and a length budget of 40 is close.

The warm start's labels carry two habits RL can remove (`warm_label`):
- "forgot to carry" (`solution(..., carry=False)`): the carry is not added into the next column, and the
  answer is read off those column sums (37+48 -> "75", as `task.no_carry_sum`);
- "checks its work" (`CHECK_FRACTION` of labels): a `Check:` line and one or two of the column lines
  repeated before the answer (34-49 tokens): with one line the answer mostly ends inside the overlong
  buffer of the run config, with two it runs past the budget and is truncated.
"""

from __future__ import annotations

import random
import re

from dapo.tiny.task import Problem, split_problems, write_task_data

__all__ = [
    "CHECK_FRACTION",
    "final_answer",
    "solution",
    "split_problems",
    "warm_label",
    "worked_answer",
    "write_task_data",
]

CHECK_FRACTION = 0.3
"""Fraction of warm-start labels that repeat column lines after `Check:` (half one line, half two)."""
_ANSWER = re.compile(r"Answer\s*:([^\n]*)")


def solution(a: int, b: int, carry: bool = True) -> tuple[list[str], str]:
    """The column lines of `a + b`, units first, and the answer they give.

    With `carry=False` each column is added without the carry from the one before (the warm start's bug):
    its line has no `+1` and the answer is the column sums' last digits under the top column's full sum.
    """
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got a={a}, b={b}")
    width = max(len(str(a)), len(str(b)))
    column_a, column_b = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    lines, digits, carry_in = [], [], 0
    for i, (x, y) in enumerate(zip(column_a, column_b, strict=True)):
        c = carry_in if carry else 0
        total = int(x) + int(y) + c
        lines.append(f"{x}+{y}+{c}={total}" if c else f"{x}+{y}={total}")
        digits.append(str(total) if i == width - 1 else str(total % 10))
        carry_in = total // 10
    return lines, "".join(reversed(digits))


def worked_answer(lines: list[str], answer: str, check_lines: int = 0) -> str:
    """The response text: the column lines, optionally `Check:` and the first `check_lines` lines again,
    then `Answer: N`."""
    if not 0 <= check_lines <= len(lines):
        raise ValueError(f"check_lines must be in [0, {len(lines)}], got {check_lines}")
    check = ["Check:", *lines[:check_lines]] if check_lines else []
    return "\n".join([*lines, *check, f"Answer: {answer}"])


def warm_label(problem: Problem, rng: random.Random, no_carry_fraction: float) -> str:
    """One warm-start label for `problem`: forgot-to-carry with probability `no_carry_fraction`, and a
    `Check:` block with probability `CHECK_FRACTION` (one or two repeated lines, evenly)."""
    lines, answer = solution(problem.a, problem.b, carry=rng.random() >= no_carry_fraction)
    check_lines = rng.choice((1, 2)) if rng.random() < CHECK_FRACTION else 0
    return worked_answer(lines, answer, check_lines)


def final_answer(response: str) -> str:
    """The text after the last `Answer:` (stripped), or "" when there is none: what evaluation compares
    with the ground truth (the reward service's `dapo` verifier reads the same line)."""
    found = _ANSWER.findall(response)
    return found[-1].strip() if found else ""

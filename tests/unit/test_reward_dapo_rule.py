"""DAPO's Answer: rule and Minerva normalisation, on hand-checked strings."""

from __future__ import annotations

import pytest
from dapo_reward.dapo_rule import dapo_verify, gold_answer, last_boxed, normalize_answer


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("1,234", "1234"),
        ("$42$", "42"),
        ("\\boxed{7}", "7"),
        ("\\text{5 inches}", "5"),
        ("\\frac12", "\\frac{1}{2}"),
        ("x = 3", "3"),
        ("10 dollars", "10"),
        ("-3", "-3"),
    ],
)
def test_normalize(raw: str, normalized: str) -> None:
    assert normalize_answer(raw) == normalized


def test_last_boxed_balances_braces_and_takes_the_last() -> None:
    assert last_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}} end") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\boxed{3}}") == "3"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("\\boxed{" + "{" * 10_000) is None  # linear, no recursion


def test_gold_formats() -> None:
    assert gold_answer("Natalia sold 72.\n#### 72") == "72"
    assert gold_answer("\\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"
    assert gold_answer(" 5 ") == "5"


@pytest.mark.parametrize(
    ("response", "truth", "correct"),
    [
        ("Let me think.\nAnswer: 72", "72", True),
        ("Answer: 1,234", "1234", True),
        ("Answer: 5 dollars", "5", True),
        ("Answer: 3\nwait, no.\nAnswer: 4", "4", True),
        ("Answer: 71", "72", False),
        ("The answer is 72", "72", False),  # no Answer: line
        ("", "72", False),
        ("Answer: \\frac12", "\\frac{1}{2}", True),
    ],
)
def test_dapo_rule(response: str, truth: str, correct: bool) -> None:
    assert dapo_verify(response, truth)[0] is correct


def test_strict_boxed_mode() -> None:
    assert dapo_verify("so \\boxed{72}", "72", strict_boxed=True) == (True, "72")
    assert dapo_verify("Answer: 72", "72", strict_boxed=True)[0] is False

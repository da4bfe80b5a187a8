"""The last final answer of a response: superseded boxes lose their box, lists of boxes stay one answer."""

from __future__ import annotations

import pytest
from dapo_reward.final_answer import boxes, final_answer_text, normalize_constants


def boxed_contents(text: str) -> list[str]:
    return [text[content : end - 1] for _, content, end in boxes(text)]


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("first guess \\boxed{2} ... so the answer is \\boxed{3}", ["3"]),
        ("\\boxed{2}, wait, no: \\boxed{3}", ["3"]),
        ("$\\boxed{2}$. Actually, I made a mistake. $\\boxed{3}$", ["3"]),
        ("\\boxed{\\boxed{2}} but that is wrong, \\boxed{3}", ["3"]),  # nested boxes go too
        ("\\boxed{1} hmm \\boxed{2} sorry \\boxed{3}", ["3"]),
        # one answer written as several boxes stays one answer (math-verify reads them as a list)
        ("The integers are \\boxed{-2} and \\boxed{1}.", ["-2", "1"]),
        ("\\boxed{(1, 2)}, \\boxed{(2, 1)}, \\boxed{(-1, -20)}", ["(1, 2)", "(2, 1)", "(-1, -20)"]),
        ("\\boxed{(3, 3)} \\text{ for part (a) and } \\boxed{(1, 1)}", ["(3, 3)", "(1, 1)"]),
        ("\\boxed{4}\\boxed{5}", ["4", "5"]),
        # a list, then a correction, then the final list
        ("\\boxed{1}, \\boxed{2}. Wait, the answer is \\boxed{3}, \\boxed{4}", ["3", "4"]),
        ("no box at all: 42", []),
    ],
)
def test_only_the_last_answer_stays_boxed(response: str, answer: list[str]) -> None:
    assert boxed_contents(final_answer_text(response)) == answer


def test_superseded_boxes_keep_their_content_in_place() -> None:
    assert final_answer_text("so \\boxed{2}. Wait, no: \\boxed{3}") == "so {2}. Wait, no: \\boxed{3}"


def test_an_answer_line_after_the_last_box_is_the_final_answer() -> None:
    response = "I get \\boxed{7}.\nLet me recheck... it is 8.\nAnswer: 8"
    assert final_answer_text(response) == "Answer: 8"
    assert final_answer_text("Answer: 4\nno, redo.\nanswer: 5") == "answer: 5"
    # an Answer: line before (or around) the last box does not override it
    assert final_answer_text("Answer: \\boxed{9}") == "Answer: \\boxed{9}"
    assert final_answer_text("Answer: 4. Then \\boxed{5}") == "Answer: 4. Then \\boxed{5}"


def test_boxes_balance_braces_and_an_unclosed_box_runs_to_the_end() -> None:
    text = "\\boxed{\\frac{1}{2}} and \\fbox {x} then \\boxed{unclosed {"
    assert boxed_contents(text)[:2] == ["\\frac{1}{2}", "x"]
    assert len(boxes(text)) == 3 and boxes(text)[-1][2] == len(text)
    assert boxes("\\boxed{" + "{" * 10_000) == [(0, 7, 10_007)]  # linear, no recursion


def test_hostile_numbers_of_boxes_leave_only_the_last() -> None:
    response = "\\boxed{1} wait " * 20_000 + "\\boxed{2}"
    assert boxed_contents(final_answer_text(response)) == ["2"]


def test_upright_e_is_eulers_number() -> None:
    assert normalize_constants("1 - \\frac{1}{\\mathrm{e}}") == "1 - \\frac{1}{e}"
    assert normalize_constants("{\\rm e}^{2} + \\mathrm { e }") == "e^{2} + e"
    assert normalize_constants("\\mathrm{exp}(1)") == "\\mathrm{exp}(1)"

"""The verdict on one item, computed inside a worker process (never in a server thread).

`math_verify`: Hugging Face math-verify. The gold is parsed with math-verify's default extraction;
a bare gold (no `$`, `\\boxed{}`, `\\(` or `\\[`) is first read as LaTeX in `$...$` (so `-2,1` is the list
of two roots, not a decimal comma), then as a plain expression. GSM8K's `#### 42` is reduced to 42. A
gold that yields no mathematical object is an error (`unparsable_gold`), never silently compared as a
string, unless the caller asks for string comparison. Of the response only the last final answer is read
(final_answer.py). Then both are compared symbolically, gold first (`verify` is not symmetric), with the
request's grading options. `dapo` and `dapo_boxed`: DAPO's string rule (dapo_rule.py). Parsed sympy
objects are never printed here: the extracted answer is math-verify's own matched text, cut to a
bounded length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dapo.data import GSM8K_MARKER, NoFinalAnswer, gsm8k_final_answer
from dapo_reward.dapo_rule import dapo_verify
from dapo_reward.final_answer import final_answer_text, normalize_constants

MAX_EXTRACTED_CHARS = 200
# verify()'s keyword arguments among the grading options; `string_comparison` is ours.
VERIFY_OPTIONS = ("float_rounding", "numeric_precision", "strict", "allow_set_relation_comp")


class UnparsableGold(ValueError):
    """The ground truth itself could not be parsed."""


def _is_delimited(text: str) -> bool:
    return "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text


def parse_gold(ground_truth: str, timeout_s: int, string_comparison: bool = False) -> list[Any]:
    """math-verify's reading of the gold: a list with at least one mathematical object (and the text
    math-verify matched, which it also compares as a string), or on request the text alone."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    text = normalize_constants(
        gsm8k_final_answer(ground_truth) if GSM8K_MARKER in ground_truth else ground_truth.strip()
    )
    if _is_delimited(text):
        attempts = [(text, [LatexExtractionConfig(), ExprExtractionConfig()])]
    else:
        attempts = [
            (f"${text}$", [LatexExtractionConfig()]),
            (text, [LatexExtractionConfig(), ExprExtractionConfig()]),
        ]
    strings: list[Any] = []
    for candidate, extraction in attempts:
        parsed = parse(candidate, extraction_config=extraction, parsing_timeout=timeout_s)
        if any(not isinstance(x, str) for x in parsed):
            return parsed
        strings = strings or parsed
    if string_comparison and strings:
        return strings
    raise UnparsableGold(ground_truth[:MAX_EXTRACTED_CHARS])


def math_verify_item(
    response: str, ground_truth: str, timeout_s: int, options: Mapping[str, Any] | None = None
) -> tuple[bool, str]:
    from math_verify import parse, verify

    options = dict(options or {})
    string_comparison = bool(options.get("string_comparison", False))
    gold = parse_gold(ground_truth, timeout_s, string_comparison)
    answer = parse(normalize_constants(final_answer_text(response)), parsing_timeout=timeout_s)
    extracted = next((x for x in reversed(answer) if isinstance(x, str)), "")
    if not answer:
        return False, extracted[:MAX_EXTRACTED_CHARS]
    grading = {k: options[k] for k in VERIFY_OPTIONS if k in options}
    correct = verify(gold, answer, timeout_seconds=timeout_s, **grading)
    return bool(correct), extracted[:MAX_EXTRACTED_CHARS]


def verify_item(
    verifier: str,
    response: str,
    ground_truth: str,
    timeout_s: int,
    options: Mapping[str, Any] | None = None,
) -> tuple[bool, str, str]:
    """(correct, extracted, error) for one item; runs in a worker's main thread.

    `options`: math-verify's grading options (`VERIFY_OPTIONS` and `string_comparison`); math-verify's
    own defaults where absent.
    """
    try:
        if verifier == "math_verify":
            correct, extracted = math_verify_item(response, ground_truth, timeout_s, options)
        elif verifier in ("dapo", "dapo_boxed"):
            correct, extracted = dapo_verify(response, ground_truth, strict_boxed=verifier == "dapo_boxed")
            extracted = extracted[:MAX_EXTRACTED_CHARS]
        else:
            raise ValueError(f"unknown verifier {verifier!r}")
    except (UnparsableGold, NoFinalAnswer):
        return False, "", "unparsable_gold"
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError):
        return False, "", "crash"
    return correct, extracted, ""

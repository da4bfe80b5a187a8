"""The verdict on one item, computed inside a worker process (never in a server thread).

`math_verify`: Hugging Face math-verify; the gold is parsed with LaTeX extraction (wrapped in `$...$`
when it has no delimiters, GSM8K's `#### 42` reduced to 42), the answer with LaTeX and expression
extraction, then compared symbolically (gold first: `verify` is not symmetric). `dapo` and
`dapo_boxed`: DAPO's string rule (dapo_rule.py). Parsed sympy objects are never printed here: the
extracted answer is math-verify's own matched text, cut to a bounded length.
"""

from __future__ import annotations

from typing import Literal

from dapo_reward.dapo_rule import dapo_verify, gold_answer

Verifier = Literal["math_verify", "dapo", "dapo_boxed"]
VERIFIERS = ("math_verify", "dapo", "dapo_boxed")
MAX_EXTRACTED_CHARS = 200


class UnparsableGold(ValueError):
    """The ground truth itself could not be parsed."""


def _wrap_gold(ground_truth: str) -> str:
    gold = gold_answer(ground_truth) if "####" in ground_truth else ground_truth.strip()
    if "$" in gold or "\\boxed" in gold or "\\(" in gold or "\\[" in gold:
        return gold
    return f"${gold}$"


def math_verify_item(response: str, ground_truth: str, timeout_s: int) -> tuple[bool, str]:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold = parse(
        _wrap_gold(ground_truth), extraction_config=[LatexExtractionConfig()], parsing_timeout=timeout_s
    )
    if not gold:
        raise UnparsableGold(ground_truth[:MAX_EXTRACTED_CHARS])
    answer = parse(
        response,
        extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
        parsing_timeout=timeout_s,
    )
    if not answer:
        return False, ""
    extracted = answer[-1] if isinstance(answer[-1], str) else ""
    return bool(verify(gold, answer, timeout_seconds=timeout_s)), extracted[:MAX_EXTRACTED_CHARS]


def verify_item(verifier: str, response: str, ground_truth: str, timeout_s: int) -> tuple[bool, str, str]:
    """(correct, extracted, error) for one item; runs in a worker's main thread."""
    try:
        if verifier == "math_verify":
            correct, extracted = math_verify_item(response, ground_truth, timeout_s)
        elif verifier in ("dapo", "dapo_boxed"):
            correct, extracted = dapo_verify(response, ground_truth, strict_boxed=verifier == "dapo_boxed")
            extracted = extracted[:MAX_EXTRACTED_CHARS]
        else:
            raise ValueError(f"unknown verifier {verifier!r}")
    except UnparsableGold:
        return False, "", "unparsable_gold"
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError):
        return False, "", "crash"
    return correct, extracted, ""

"""DAPO's answer rule: read the last `Answer:` line (or, strictly, the last \\boxed{}) and compare
after Minerva-style normalisation (Lewkowycz et al. 2022), as the DAPO authors' verifier does.

Pure string functions, linear in the input: they run on untrusted model output.
"""

from __future__ import annotations

import re

from dapo.data import GSM8K_MARKER, gsm8k_final_answer, without_thousands_separators

TAIL_CHARS = 300  # the answer line is looked for in the tail of the response

SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]
REMOVED = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
]
_ANSWER = re.compile(r"Answer\s*:\s*([^\n]*)", re.IGNORECASE)


def normalize_answer(answer: str) -> str:
    """Minerva's normalisation of a final answer (units, \\text{}, \\boxed{}, $, \\frac shorthand, commas)."""
    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", r"$\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", r"\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", r"\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", r"frac{\2}{\3}", answer)  # \frac12 -> \frac{1}{2}
    answer = re.sub(r"(sqrt)([^{])", r"sqrt{\2}", answer)  # \sqrt2 -> \sqrt{2}
    return without_thousands_separators(answer.replace("$", "").strip())


def last_answer_line(response: str) -> str | None:
    """The text after the last `Answer:` in the response's tail, or None."""
    matches = _ANSWER.findall(response[-TAIL_CHARS:])
    return matches[-1].strip() if matches else None


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None. Linear time."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for i in range(begin - 1, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


def gold_answer(ground_truth: str) -> str:
    """The gold answer: GSM8K's final answer (after the last `####`), inside a \\boxed{}, or as given.
    NoFinalAnswer for a `####` with nothing after it."""
    if GSM8K_MARKER in ground_truth:
        return gsm8k_final_answer(ground_truth)
    boxed = last_boxed(ground_truth)
    return boxed if boxed is not None else ground_truth.strip()


def dapo_verify(response: str, ground_truth: str, strict_boxed: bool = False) -> tuple[bool, str]:
    """(correct, extracted answer) under DAPO's rule; a missing answer is wrong."""
    extracted = last_boxed(response) if strict_boxed else last_answer_line(response)
    if extracted is None:
        return False, ""
    normalized = normalize_answer(extracted)
    return normalized == normalize_answer(gold_answer(ground_truth)), normalized

"""Which part of a response is its final answer, before math-verify reads it.

A model that corrects itself writes several answers; the last one counts. The last `\\boxed{}` is the
answer, together with the boxes right before it that math-verify would join into one list (close
together, or under 70 characters apart with `and`, `or`, `,` or `;` between them: `\\boxed{-2} and
\\boxed{1}` is the list -2, 1), except where the text between reads as a correction (`wait`, `no`,
`actually`, `so the answer is`, ...). Earlier boxes are superseded attempts: they are unboxed, so that
math-verify (which merges the boxes of one formula into a set) reads only the last answer. A
DAPO-style `Answer:` line after the last box is the final answer instead, and only the text from it
on is read.

Pure string functions, linear in the input: they run on untrusted model output.
"""

from __future__ import annotations

import re
from collections import deque

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_WORD = re.compile(r"\\(?:boxed|fbox)(?=\s*\{)")
_ANSWER_LINE = re.compile(r"answer\s*:", re.IGNORECASE)
# Boxes of one answer, as math-verify joins them: close together, or a little further apart with a list
# separator between them; but not when the text between them reads as a correction.
_SEPARATOR = re.compile(r"\b(?:and|or)\b|[,;]", re.IGNORECASE)
_CORRECTION = re.compile(
    r"\b(?:wait|no|not|actually|instead|mistakes?|wrong|incorrect|correct(?:ed|ion)?|sorry|hmm|oops|"
    r"but|however|so|therefore|thus|hence|final|answers?|should|rather|let|check|re-?check|again|"
    r"recalculat\w*|redo|revis\w*)\b",
    re.IGNORECASE,
)
NEAR_CHARS = 10
LIST_CHARS = 70
# Upright e is Euler's number (ISO 80000-2); math-verify's unit stripping drops a trailing \text{e}.
_UPRIGHT_E = re.compile(r"\\mathrm\s*\{\s*e\s*\}|\{\s*\\rm\s+e\s*\}")


def boxes(text: str) -> list[tuple[int, int, int]]:
    """Top-level boxes as (start, content start, end) with text[end - 1] the closing brace.

    A box whose braces never close runs to the end of the text (and is the last box).
    """
    found: list[tuple[int, int, int]] = []
    end = 0
    for match in _BOX_OPEN.finditer(text):
        if match.start() < end:  # nested inside the previous box
            continue
        depth = 1
        i = match.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        end = i
        found.append((match.start(), match.end(), end))
        if depth:
            break
    return found


def final_answer_text(response: str) -> str:
    """The response as math-verify should read it: only its last final answer marked as such."""
    found = boxes(response)
    last_line = deque(_ANSWER_LINE.finditer(response), maxlen=1)  # the last match, in linear time
    if last_line and (not found or last_line[0].start() >= found[-1][2]):
        return response[last_line[0].start() :]
    if len(found) < 2:
        return response
    first = len(found) - 1  # index of the first box of the final answer
    while first > 0 and _same_answer(response[found[first - 1][2] : found[first][0]]):
        first -= 1
    if first == 0:
        return response
    pieces = []
    position = 0
    for start, _, end in found[:first]:  # superseded attempts lose their boxes (nested ones too)
        pieces.append(response[position:start])
        pieces.append(_BOX_WORD.sub("", response[start:end]))
        position = end
    pieces.append(response[position:])
    return "".join(pieces)


def _same_answer(between: str) -> bool:
    """Whether two boxes with this text between them are one answer (a list), not an answer and its fix."""
    if len(between) >= LIST_CHARS or _CORRECTION.search(between):
        return False
    return len(between) < NEAR_CHARS or _SEPARATOR.search(between) is not None


def normalize_constants(text: str) -> str:
    """Upright e written as `\\mathrm{e}` becomes `e`, which math-verify reads as Euler's number."""
    return _UPRIGHT_E.sub("e", text)

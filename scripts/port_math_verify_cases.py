"""Writes tests/data/math_verify_cases.jsonl from a checkout of huggingface/Math-Verify's tests.

    python scripts/port_math_verify_cases.py MATH_VERIFY_CHECKOUT [--commit SHA]

Only the data is taken: every (gold, prediction, expected) triple of the parametrised tests that grade a
gold against a prediction, with the grading options that test passes (float rounding, strictness,
set-vs-relation comparison) and the extraction it restricts itself to. The upstream test modules are
imported in a child process whose working directory is the checkout (they import each other as
`tests.*`) and called with their parameters, with their comparison helper replaced by a recorder of
its arguments and of the value the test compares its result with: nothing is graded there, and
nothing but the data is copied.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests/data/math_verify_cases.jsonl"
# Tests that grade gold against prediction; the others test parse-only extraction of letters
# (test_string_extraction), configuration objects (test_configs), timeouts and error propagation.
MODULES = [
    "test_all",
    "test_boxed",
    "test_strict",
    "test_numina_cases",
    "test_open_thoughts",
    "test_yujianll",
]

_CHILD = r"""
import importlib, json, sys
sys.path.insert(0, ".")
modules = json.loads(sys.argv[1])
out = []

class Recorded:
    # What the test compares the helper's result with is the expected verdict.
    def __init__(self, row):
        self.row = row
    def __eq__(self, expected):
        self.row["expected"] = int(expected)
        out.append(self.row)
        return True
    __hash__ = None

def recorder(source):
    def compare(gold, pred, **options):
        return Recorded({"source": source, "gold": gold, "pred": pred, "options": options})
    return compare

for name in modules:
    module = importlib.import_module(f"tests.{name}")
    for attr, fn in list(vars(module).items()):
        if not attr.startswith("test_") or not callable(fn):
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if marks:
            argnames, argvalues = marks[0].args[:2]
            argnames = [a.strip() for a in (argnames.split(",") if isinstance(argnames, str) else argnames)]
            params = [dict(zip(argnames, v)) for v in argvalues]
        else:
            params = [{}]
        for i, kwargs in enumerate(params):
            source = f"{name}.py::{attr}[{i}]"
            if "compare_strings" in vars(module):
                module.compare_strings = recorder(source)
            else:  # calls parse/verify itself, with math-verify's defaults
                module.parse = lambda text: text
                module.verify = lambda gold, pred: Recorded(
                    {"source": source, "gold": gold, "pred": pred, "options": {}}
                )
                module.int = lambda value: value
            try:
                fn(**kwargs)
            except TypeError:
                pass  # a test that is not a gold/prediction comparison (no such parameters)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("checkout", type=Path, help="a work tree of huggingface/Math-Verify")
    parser.add_argument("--commit", help="the checkout's commit (default: git rev-parse HEAD)")
    args = parser.parse_args()
    commit = (
        args.commit
        or subprocess.run(
            ["git", "-C", str(args.checkout), "rev-parse", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(MODULES)],
        cwd=args.checkout,
        capture_output=True,
        text=True,
        env=env,
    )
    if child.returncode != 0:
        sys.exit(f"reading the upstream tests failed:\n{child.stderr}")
    rows = json.loads(child.stdout)
    header = {
        "header": (
            "Test cases of Math-Verify's own test suite (tests/*.py, parametrised gold/prediction/expected "
            "triples, as data), ported for tests/unit/test_math_verify_suite.py. "
            "options: the grading options and extraction the upstream test passes."
        ),
        "source": "https://github.com/huggingface/Math-Verify",
        "license": "Apache-2.0 (Copyright The HuggingFace Team)",
        "license_note": "the repository's LICENCE is Apache-2.0; tests/test_all.py also carries an MIT notice "
        "of the same copyright holder",
        "commit": commit,
        "num_cases": len(rows),
    }
    with OUT.open("w") as f:
        f.write(json.dumps(header) + "\n")
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} cases to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

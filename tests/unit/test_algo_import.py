"""`dapo.algo`'s numpy-only parts must import and run without torch (the controller has none)."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import dapo.algo
from dapo.algo import dynamic_sampling_filter, group_advantages, overlong_filter_mask, overlong_penalty
assert group_advantages([1.0, -1.0], 2).shape == (2,)
assert dynamic_sampling_filter([True, False], 2).num_groups_kept == 1
assert overlong_penalty([5], 10, 2)[0] == 0.0
assert overlong_filter_mask([True]).tolist() == [False]
print("ok")
"""


def test_numpy_parts_import_without_torch() -> None:
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_lazy_exports_resolve() -> None:
    import dapo.algo

    for name in dapo.algo.__all__:
        assert callable(getattr(dapo.algo, name))
    try:
        dapo.algo.no_such_function  # noqa: B018
    except AttributeError as error:
        assert "no_such_function" in str(error)
    else:
        raise AssertionError("expected AttributeError")

"""Pure parts of the controller: settings from the environment, the SSE resume cursor, slim imports."""

from __future__ import annotations

import re
import subprocess
import sys

from dapo_controller.api import LAST_EVENT_ID_PATTERN, split_cursor
from dapo_controller.settings import ControllerSettings
from hypothesis import given
from hypothesis import strategies as st


def test_settings_defaults_and_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DAPO_API_TOKEN", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    plain = ControllerSettings()
    assert (plain.port, plain.run_loop, plain.api_token) == (8000, True, None)
    assert plain.redis_url == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("DAPO_API_TOKEN", "s3cret")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/1")
    from_env = ControllerSettings()
    assert (from_env.api_token, from_env.redis_url) == ("s3cret", "redis://redis:6379/1")
    assert ControllerSettings(api_token="given").api_token == "given"  # an explicit value wins
    monkeypatch.setenv("DAPO_API_TOKEN", "")
    assert ControllerSettings().api_token is None  # an empty token means an open controller


stream_ids = st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1)).map(lambda p: f"{p[0]}-{p[1]}")


@given(events=stream_ids, metrics=stream_ids)
def test_every_cursor_the_stream_sends_is_accepted_back(events: str, metrics: str) -> None:
    cursor = f"{events}|{metrics}"
    assert re.fullmatch(LAST_EVENT_ID_PATTERN, cursor)
    assert split_cursor(cursor) == (events, metrics)


def test_partial_and_malformed_cursors() -> None:
    assert split_cursor(None) == ("0", "0")
    assert split_cursor("") == ("0", "0")
    assert split_cursor("5-1") == ("5-1", "0")
    assert split_cursor("|7-0") == ("0", "7-0")
    for bad in ("yesterday", "1-2|x", "1-2|3-4|5-6", "-1", "1--2", "1" * 20):
        assert not re.fullmatch(LAST_EVENT_ID_PATTERN, bad), bad


def test_the_controller_imports_no_torch_or_vllm() -> None:
    code = (
        "import sys, dapo_controller.app, dapo_controller.api, dapo_controller.store\n"
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"

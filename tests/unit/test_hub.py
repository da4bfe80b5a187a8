"""Models named by hub id come from the local Hugging Face cache (no network), or `dapo run` says how to
provide them before any service starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dapo.hub import NotInCacheError, cached_snapshot, hub_cache_dir, resolve_model_dir
from tests.hf_cache import fake_hub_cache

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny-model"


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf"


def test_a_hub_id_resolves_to_its_cached_snapshot(hf_home: Path) -> None:
    snapshot = fake_hub_cache(hf_home, "Qwen/Qwen2.5-1.5B", TINY)
    assert hub_cache_dir() == hf_home / "hub"
    assert resolve_model_dir("Qwen/Qwen2.5-1.5B") == snapshot
    assert (resolve_model_dir("Qwen/Qwen2.5-1.5B") / "config.json").is_file()
    assert resolve_model_dir(str(TINY)) == TINY  # a directory wins


def test_hf_hub_cache_overrides_hf_home(
    hf_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = fake_hub_cache(tmp_path / "other", "org/model", TINY)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other" / "hub"))
    assert cached_snapshot("org/model") == snapshot


def test_a_missing_model_says_where_it_looked_and_how_to_provide_it(hf_home: Path) -> None:
    with pytest.raises(NotInCacheError) as info:
        resolve_model_dir("Org/Missing-7B")
    message = str(info.value)
    assert "policy.model_name 'Org/Missing-7B'" in message
    assert str(hf_home / "hub" / "models--Org--Missing-7B") in message
    assert "huggingface-cli download Org/Missing-7B" in message and "HF_HOME" in message


def test_dapo_run_refuses_a_missing_model_before_starting_anything(hf_home: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dapo.cli",
            "run",
            str(ROOT / "examples/configs/tiny_cpu.yaml"),
            "policy.model_name=Org/Missing-7B",
            f"logger.log_dir={logs}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Org/Missing-7B" in done.stderr and "huggingface-cli download" in done.stderr
    assert not logs.exists()  # no service was started (they log under logger.log_dir)


def test_the_rollout_server_takes_a_hub_id(hf_home: Path) -> None:
    from dapo_rollout.main import parse_settings

    snapshot = fake_hub_cache(hf_home, "Qwen/Qwen2.5-1.5B", TINY)
    assert parse_settings(["--model", "Qwen/Qwen2.5-1.5B"]).model == str(snapshot)
    with pytest.raises(SystemExit):
        parse_settings(["--model", "Org/Missing-7B"])


def test_the_trainer_reads_a_hub_id(hf_home: Path) -> None:
    from dapo_trainer.model import read_model_info

    snapshot = fake_hub_cache(hf_home, "Qwen/Qwen2.5-1.5B", TINY)
    info = read_model_info("Qwen/Qwen2.5-1.5B", None)
    assert info.model_dir == snapshot and info.vocab_size == 512

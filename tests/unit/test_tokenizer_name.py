"""`policy.tokenizer.name` (NeMo RL: the tokenizer to use, by default the model's): the trainer reads the
tokenizer from there, and `dapo run` refuses one that is nowhere, naming the key, before any service starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dapo_trainer.model import read_model_info

from dapo.config import ConfigError, load_config
from dapo.launch.services import check_model

MODEL = Path(__file__).resolve().parents[2] / "examples" / "tiny-model"


def test_the_tokenizer_comes_from_policy_tokenizer_name(tmp_path: Path) -> None:
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(MODEL, tokenizer, ignore=shutil.ignore_patterns("*.safetensors", "data"))
    assert read_model_info(str(MODEL), str(tokenizer)).tokenizer_dir == tokenizer
    assert read_model_info(str(MODEL), None).tokenizer_dir == MODEL  # default: the model's own


def test_a_tokenizer_that_is_nowhere_is_refused_naming_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config = load_config(None, [f"policy.model_name={MODEL}", "policy.tokenizer.name=acme/no-such-tokenizer"])
    with pytest.raises(ConfigError) as raised:
        check_model(config)
    assert "policy.tokenizer.name 'acme/no-such-tokenizer'" in str(raised.value)

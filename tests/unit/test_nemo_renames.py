"""Each NeMo RL key that is a rename of ours (dapo.config.nemo.RENAMES) sets our key to its value, and a
file or override that sets both spellings to different values is refused naming both."""

from __future__ import annotations

from typing import Any

import pytest

from dapo.config import ConfigError, RunConfig, load_config
from dapo.config.nemo import RENAMES

VALUES: dict[str, tuple[str, Any]] = {
    "policy.optimizer.kwargs.lr": ("3e-6", 3e-6),
    "policy.optimizer.kwargs.weight_decay": ("0.05", 0.05),
    "policy.optimizer.kwargs.betas": ("[0.8,0.9]", (0.8, 0.9)),
    "policy.optimizer.kwargs.eps": ("1e-6", 1e-6),
    "policy.generation.stop_strings": ("['</answer>']", ["</answer>"]),
    "env.math.num_workers": ("3", 3),
    "grpo.max_val_samples": ("17", 17),
    "data.train.dataset_name": ("GSM8K", "GSM8K"),
    "data.train.data_path": ("rows/train.jsonl", "rows/train.jsonl"),
    "data.validation.dataset_name": ("MATH-500", "MATH-500"),
    "data.validation.data_path": ("rows/val.jsonl", "rows/val.jsonl"),
    "data.train.split_validation_size": ("0.1", 0.1),
}


def ours(config: RunConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return tuple(value) if isinstance(value, tuple) else value


def test_every_rename_is_covered() -> None:
    assert sorted(VALUES) == sorted(RENAMES)


@pytest.mark.parametrize("nemo_key", sorted(RENAMES))
def test_the_nemo_spelling_sets_our_key(nemo_key: str) -> None:
    text, expected = VALUES[nemo_key]
    config = load_config(None, [f"{nemo_key}={text}"])
    value = ours(config, RENAMES[nemo_key])
    assert (list(value) if isinstance(expected, list) else value) == pytest.approx(expected), value


def test_both_spellings_with_different_values_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["env.math.num_workers=3", "env.math.workers=4"])
    assert "env.math.workers (4) and env.math.num_workers (3) differ: set one of them" in str(raised.value)

"""Config rules of the fail-closed behaviour: the deadlines have bounds and documented defaults, and
importance sampling under truncated sampling (top_p < 1 or top_k) is warned about, naming the keys."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from dapo.config import ConfigError, ConfigWarning, load_config

TINY = Path(__file__).resolve().parents[2] / "examples/configs/tiny_cpu.yaml"


def test_deadline_defaults_and_bounds() -> None:
    services = load_config(TINY).services
    assert services.trainer_progress_timeout_s == 1800
    assert services.redis_timeout_s == 60
    assert services.rollout_timeout_s == 600
    for key in ("trainer_progress_timeout_s", "redis_timeout_s"):
        with pytest.raises(ConfigError, match=f"services.{key}"):
            load_config(TINY, [f"services.{key}=0"])


@pytest.mark.parametrize("truncation", ["policy.generation.top_p=0.9", "policy.generation.top_k=20"])
def test_importance_sampling_under_truncated_sampling_warns(truncation: str) -> None:
    with pytest.warns(ConfigWarning) as caught:
        load_config(TINY, [truncation, "loss_fn.use_importance_sampling_correction=true"])
    message = str(caught[0].message)
    assert "loss_fn.use_importance_sampling_correction" in message and "top_p" in message
    assert "biased" in message


def test_truncation_without_the_correction_or_the_correction_alone_is_quiet() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(TINY, ["policy.generation.top_p=0.9"])
        load_config(TINY, ["loss_fn.use_importance_sampling_correction=true", "policy.generation.top_k=-1"])
        load_config(TINY, ["loss_fn.use_importance_sampling_correction=true", "policy.generation.top_k=0"])

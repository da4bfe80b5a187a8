"""The Redis retention keys of `services`: defaults, the limits writers apply, and errors naming the key."""

from __future__ import annotations

import pytest

from dapo.config import ConfigError, parse_config
from dapo.stream_limits import StreamLimits


def test_defaults_bound_every_stream() -> None:
    services = parse_config({}).services
    assert services.redis_events_maxlen == 10_000
    assert services.redis_metrics_maxlen == 100_000
    assert services.redis_keep_applied_batches == 0
    assert services.rollout_server_ttl_s == 60.0
    assert StreamLimits.of(services) == StreamLimits()


def test_the_limits_come_from_the_run_config() -> None:
    services = parse_config({"services": {"redis_events_maxlen": 7, "redis_metrics_maxlen": 9}}).services
    assert StreamLimits.of(services) == StreamLimits(events_maxlen=7, metrics_maxlen=9)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("redis_events_maxlen", 0, "greater than or equal to 1"),
        ("redis_metrics_maxlen", -5, "greater than or equal to 1"),
        ("redis_keep_applied_batches", -1, "greater than or equal to 0"),
        ("rollout_server_ttl_s", 0, "greater than 0"),
        ("redis_events_maxlen", "many", "integer"),
    ],
)
def test_a_bad_value_names_the_key(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"services": {key: value}})
    assert f"services.{key}" in str(info.value) and expected in str(info.value)

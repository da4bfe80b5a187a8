"""How far a run's metric and event streams grow in Redis: every writer appends with XADD MAXLEN (exact,
so a stream never holds more than its limit), the limits taken from the run's `services.redis_*_maxlen`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dapo.config.schema import ServicesConfig

_DEFAULTS = ServicesConfig()


@dataclass(frozen=True)
class StreamLimits:
    events_maxlen: int = _DEFAULTS.redis_events_maxlen
    metrics_maxlen: int = _DEFAULTS.redis_metrics_maxlen

    @classmethod
    def of(cls, services: ServicesConfig) -> StreamLimits:
        return cls(services.redis_events_maxlen, services.redis_metrics_maxlen)

"""Settings of the reward service (`dapo reward`, flags or `--settings FILE`).

The grading fields are the run config's `env.math` fields (same defaults and bounds); `from_math`
builds the settings from that section.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dapo.config.schema import MathEnvConfig, MathVerifyConfig
from dapo.service_settings import ServiceSettings, config_field

MATH_FIELDS = ("workers", "timeout", "max_response_chars", "math_verify")
"""The fields taken from the run config's env.math."""


class RewardSettings(ServiceSettings):
    host: str = "127.0.0.1"
    """Bind address of both servers."""
    grpc_port: int = Field(50052, ge=0, le=65535)
    """gRPC port (0: any free one)."""
    http_port: int = Field(8002, ge=0, le=65535)
    """REST port (0: any free one)."""
    cache_size: int = Field(100_000, ge=0)
    """Verdicts kept in the LRU cache."""
    workers: int = config_field(MathEnvConfig, "workers")
    timeout: int = config_field(MathEnvConfig, "timeout")
    max_response_chars: int = config_field(MathEnvConfig, "max_response_chars")
    math_verify: MathVerifyConfig = config_field(MathEnvConfig, "math_verify")

    @classmethod
    def from_math(cls, math: MathEnvConfig, **service: Any) -> RewardSettings:
        """The settings of a reward service grading as `math` (a run config's env.math) says."""
        return cls(**math_fields(math), **service)


def math_fields(math: MathEnvConfig) -> dict[str, Any]:
    """The env.math values a reward service takes."""
    return {name: getattr(math, name) for name in MATH_FIELDS}

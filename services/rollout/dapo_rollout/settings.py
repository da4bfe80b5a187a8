"""Settings of a rollout server (`dapo rollout`, flags or `--settings FILE`).

The engine fields the run config also has are its `policy.generation.vllm_cfg` fields (same defaults
and bounds; `dtype` is vllm_cfg's `precision`).
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from dapo.config.schema import VllmConfig
from dapo.dtypes import ServedDType
from dapo.hub import NotInCacheError, resolve_model_dir
from dapo.service_settings import ServiceSettings, config_field


class RolloutSettings(ServiceSettings):
    model: str
    """Hugging Face model directory (or the hub id of a cached snapshot)."""
    version: int = Field(0, ge=0)
    """Policy version the on-disk weights count as."""
    wait_for_weights: bool = False
    """Start from the architecture only; NOT_SERVING until the first weights arrive."""
    host: str = "0.0.0.0"
    """Bind address."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port."""
    metrics_port: int = Field(8001, ge=0, le=65535)
    """Prometheus /metrics port (0: off)."""
    weights_address: str | None = None
    """host:port of the trainer's WeightPublisher."""
    poll_seconds: float = Field(3.0, gt=0)
    """How often to ask the publisher for a newer version."""
    max_model_len: int | None = config_field(VllmConfig, "max_model_len")
    dtype: ServedDType | None = config_field(VllmConfig, "precision")
    gpu_memory_utilization: float = config_field(VllmConfig, "gpu_memory_utilization")
    tensor_parallel_size: int | Literal["auto"] = "auto"
    """GPUs to shard the model over (vLLM tensor parallelism); auto = every visible GPU (1 on CPU)."""
    enforce_eager: bool | None = config_field(VllmConfig, "enforce_eager")
    hf_overrides: dict[str, Any] = Field(default_factory=dict)
    """Values replacing those of the model's config.json."""
    seed: int = 0
    """Sampling seed of the engine."""
    allow_inflight_updates: bool = False
    """Swap weights without waiting for calls in flight (their samples carry the older version)."""
    log_level: str = "INFO"
    """Log level."""

    @field_validator("model")
    @classmethod
    def _model_dir(cls, name: str) -> str:
        try:
            model = str(resolve_model_dir(name, "model (--model)"))
        except NotInCacheError as exc:
            raise ValueError(str(exc)) from None
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(
                f"model (--model) {model}: no config.json there (expected a Hugging Face model directory)"
            )
        return model

    @field_validator("tensor_parallel_size")
    @classmethod
    def _at_least_one(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"tensor_parallel_size must be 'auto' or a whole number >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _one_start(self) -> RolloutSettings:
        if self.wait_for_weights and self.version != 0:
            raise ValueError(
                f"version ({self.version}) and wait_for_weights exclude each other: the weights that "
                "arrive first set the version"
            )
        return self

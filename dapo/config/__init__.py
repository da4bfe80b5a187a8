"""The run config: one typed, validated schema with NVIDIA NeMo RL's key names.

`load_config(path, overrides)` reads YAML, applies dotted `key=value` overrides and validates;
any problem raises `ConfigError` naming the key. Importing this module needs no torch.
"""

from dapo.config.loader import ConfigError, apply_overrides, load_config, parse_config
from dapo.config.schema import (
    CheckpointingConfig,
    ClusterConfig,
    ConfigWarning,
    DataConfig,
    GenerationConfig,
    GRPOConfig,
    LoggerConfig,
    LossConfig,
    MathEnvConfig,
    OptimizerConfig,
    PolicyConfig,
    RewardShapingConfig,
    RunConfig,
    ServicesConfig,
)

__all__ = [
    "CheckpointingConfig",
    "ClusterConfig",
    "ConfigError",
    "ConfigWarning",
    "DataConfig",
    "GRPOConfig",
    "GenerationConfig",
    "LoggerConfig",
    "LossConfig",
    "MathEnvConfig",
    "OptimizerConfig",
    "PolicyConfig",
    "RewardShapingConfig",
    "RunConfig",
    "ServicesConfig",
    "apply_overrides",
    "load_config",
    "parse_config",
]

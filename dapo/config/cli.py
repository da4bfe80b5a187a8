"""`dapo config CONFIG [key=value ...]`: print the resolved config as JSON, or say what is wrong."""

from __future__ import annotations

import json
import sys

from dapo.config.loader import ConfigError, load_config


def show_config(config_path: str, overrides: list[str]) -> int:
    """Print the resolved config; exit status 2 (and the problem) when it is invalid."""
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        print(f"dapo config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0

"""`dapo config CONFIG [key=value ...]`: print the resolved config as JSON, or say what is wrong."""

from __future__ import annotations

import argparse
import json
import sys

from dapo.config.loader import ConfigError, load_config


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dapo config", description=__doc__)
    parser.add_argument("config", help="YAML run config")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"dapo config: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0

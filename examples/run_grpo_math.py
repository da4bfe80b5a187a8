"""Run DAPO/GRPO on math with NVIDIA NeMo RL-style arguments:

    python examples/run_grpo_math.py [--config FILE] [key=value ...]

e.g. `python examples/run_grpo_math.py --config examples/configs/qwen2.5_1.5b_dapo_1node.yaml
policy.model_name=/models/Qwen2.5-1.5B cluster.gpus_per_node=8`. It resolves the same config schema and
runs `dapo run` (every service as a local process on this node). NeMo RL's configs and key names load too
(`defaults:` chains, `${...}` interpolation); a hub id such as `policy.model_name=Qwen/Qwen2.5-1.5B` is read
from the local Hugging Face cache, and `logger.wandb_enabled=True` needs the `wandb` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "qwen2.5_1.5b_dapo_1node.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML run config")
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if "=" not in o]
    if unknown:
        parser.error(f"expected key=value overrides, got {' '.join(unknown)}")
    from dapo.cli import main as dapo_main

    return dapo_main(["run", args.config, *overrides])


if __name__ == "__main__":
    sys.exit(main())

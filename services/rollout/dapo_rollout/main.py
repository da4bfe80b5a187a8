"""`dapo rollout`: parse the flags, then start the rollout server (vLLM is imported only after parsing)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os

from dapo_rollout.settings import RolloutSettings


def parse_args(argv: list[str] | None = None) -> RolloutSettings:
    """The server's settings: `--settings FILE` (JSON/YAML) with the flags given over it."""
    p = argparse.ArgumentParser(prog="dapo rollout", description="Serve a policy with vLLM over gRPC.")
    p.add_argument("--settings", help="JSON/YAML file of the server's settings (flags win over it)")
    p.add_argument("--model", help="Hugging Face model directory (required here or in --settings)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--version", type=int, help="policy version the on-disk weights count as (default 0)")
    start.add_argument(
        "--wait-for-weights",
        action="store_true",
        default=None,
        help="start from the architecture only; NOT_SERVING until the first weights arrive",
    )
    p.add_argument("--host", help="bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off; default 8001)")
    p.add_argument("--weights-address", help="host:port of the trainer's WeightPublisher")
    p.add_argument("--poll-seconds", type=float, help="how often to ask the publisher (default 3)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--dtype", help="engine dtype (default: float32 on CPU, the model's on GPU)")
    p.add_argument("--gpu-memory-utilization", type=float, help="default 0.9")
    p.add_argument(
        "--tensor-parallel-size",
        type=_tensor_parallel_flag,
        help="GPUs to shard the model over (vLLM tensor parallelism); auto (the default) = every visible "
        "GPU (1 on CPU)",
    )
    eager = p.add_mutually_exclusive_group()
    eager.add_argument("--enforce-eager", dest="enforce_eager", action="store_true", default=None)
    eager.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    p.add_argument("--hf-overrides", type=json.loads, help="JSON object over config.json")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument(
        "--allow-inflight-updates",
        action="store_true",
        default=None,
        help="swap weights without waiting for calls in flight (their samples carry the older version)",
    )
    p.add_argument("--log-level", help="default INFO")
    args = p.parse_args(argv)
    from dapo.config import ConfigError
    from dapo.service_settings import resolve_settings

    flags = {k: v for k, v in vars(args).items() if k != "settings"}
    try:
        return resolve_settings(RolloutSettings, args.settings, flags)
    except ConfigError as exc:
        p.error(str(exc))


def _tensor_parallel_flag(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, got {value}")
    return int(value)


def tensor_parallel_size(flag: int | str) -> int:
    """The flag's number, or with 'auto' every GPU this process sees (CUDA_VISIBLE_DEVICES or the
    devices a container was given); 1 without a GPU."""
    if flag != "auto":
        return int(flag)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # count without initialising CUDA here
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from dapo_rollout.engine import EngineOptions
    from dapo_rollout.service import ServerOptions, serve

    options = ServerOptions(
        engine=EngineOptions(
            model=args.model,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size(args.tensor_parallel_size),
            enforce_eager=args.enforce_eager,
            hf_overrides=args.hf_overrides,
            seed=args.seed,
            wait_for_weights=args.wait_for_weights,
            initial_version=args.version,
            allow_inflight_updates=args.allow_inflight_updates,
        ),
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port or None,
        weights_address=args.weights_address,
        poll_s=args.poll_seconds,
    )
    return asyncio.run(serve(options))


if __name__ == "__main__":
    raise SystemExit(main())

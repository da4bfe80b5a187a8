"""`dapo rollout`: serve a policy with vLLM over gRPC (vLLM is imported only after the options are parsed)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from dapo.commands import Flags, SettingsFile, parse_with, resolve_or_usage_error

if TYPE_CHECKING:
    from dapo_rollout.settings import RolloutSettings

# typer reads these annotations at run time: Optional[...] (not `X | None`) is what it understands.
# ruff: noqa: UP045


def _tensor_parallel_flag(value: str) -> int | str:
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter(f"must be 'auto' or a whole number >= 1, got {value}")
    return int(value)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"must be a JSON object, got {text}")
    return value


def options(
    settings: Annotated[Optional[str], SettingsFile] = None,
    model: Annotated[
        Optional[str], typer.Option(help="Hugging Face model directory (required here or in --settings)")
    ] = None,
    version: Annotated[
        Optional[int], typer.Option(help="policy version the on-disk weights count as (default 0)")
    ] = None,
    wait_for_weights: Annotated[
        Optional[bool],
        typer.Option(
            "--wait-for-weights",
            help="start from the architecture only; NOT_SERVING until the first weights arrive",
        ),
    ] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address (default 0.0.0.0)")] = None,
    port: Annotated[Optional[int], typer.Option(help="gRPC port (default 50051)")] = None,
    metrics_port: Annotated[
        Optional[int], typer.Option(help="Prometheus /metrics port (0: off; default 8001)")
    ] = None,
    weights_address: Annotated[
        Optional[str], typer.Option(help="host:port of the trainer's WeightPublisher")
    ] = None,
    poll_seconds: Annotated[
        Optional[float], typer.Option(help="how often to ask the publisher (default 3)")
    ] = None,
    max_model_len: Annotated[Optional[int], typer.Option(help="prompt plus answer tokens")] = None,
    dtype: Annotated[
        Optional[str], typer.Option(help="engine dtype (default: float32 on CPU, the model's on GPU)")
    ] = None,
    gpu_memory_utilization: Annotated[Optional[float], typer.Option(help="default 0.9")] = None,
    tensor_parallel_size: Annotated[
        Optional[str],
        typer.Option(
            parser=_tensor_parallel_flag,
            help="GPUs to shard the model over (vLLM tensor parallelism); auto (the default) = every "
            "visible GPU (1 on CPU)",
        ),
    ] = None,
    enforce_eager: Annotated[
        Optional[bool], typer.Option("--enforce-eager/--no-enforce-eager", help="no CUDA graphs")
    ] = None,
    hf_overrides: Annotated[
        Optional[dict[str, Any]], typer.Option(parser=_json_object, help="JSON object over config.json")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="default 0")] = None,
    allow_inflight_updates: Annotated[
        Optional[bool],
        typer.Option(
            "--allow-inflight-updates",
            help="swap weights without waiting for calls in flight (their samples carry the older version)",
        ),
    ] = None,
    log_level: Annotated[Optional[str], typer.Option(help="default INFO")] = None,
) -> Flags:
    """Serve a policy with vLLM over gRPC."""
    return dict(locals())


def tensor_parallel_size(flag: int | str) -> int:
    """The flag's number, or with 'auto' every GPU this process sees (CUDA_VISIBLE_DEVICES or the
    devices a container was given); 1 without a GPU."""
    if flag != "auto":
        return int(flag)
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # count without initialising CUDA here
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def resolve(flags: Flags) -> RolloutSettings:
    """The settings the parsed options give (the file's, the flags over them)."""
    from dapo_rollout.settings import RolloutSettings

    settings_file = flags.pop("settings")
    return resolve_or_usage_error(RolloutSettings, settings_file, flags)


def parse_settings(argv: list[str] | None = None) -> RolloutSettings:
    """The server's settings from a command line (`dapo rollout ARGS`)."""
    return parse_with(options, resolve, list(sys.argv[1:] if argv is None else argv), "dapo rollout")


def main(argv: list[str] | None = None) -> int:
    return serve_settings(parse_settings(argv))


def serve_settings(args: RolloutSettings) -> int:
    """Start the server (imports vLLM) and serve until SIGTERM."""
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

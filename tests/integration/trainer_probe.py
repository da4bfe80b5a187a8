"""What the trainer's ranks actually run with, and the check of it against a GPU run's claims.

Run under torchrun (`python -m torch.distributed.run --nproc_per_node=N trainer_probe.py MODEL OUT
PRECISION`): every rank sets up the process group, the FSDP2 model and the optimizer with the trainer's
own `setup_*` code, trains on one synthetic batch, and writes to OUT/rank<r>.json the process group's
backend, where the parameters and the optimizer state live, their dtypes (the float32 master copy),
the dtypes inside the forward (parameters as FSDP2 gathers them, and a decoder layer's output) and
torch.cuda.max_memory_allocated(). `gpu_run_problems` lists what differs from a CUDA run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any


def probe(model_dir: str, out_dir: Path, precision: str) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from dapo_trainer.distributed import setup_distributed, teardown_distributed
    from dapo_trainer.model import read_model_info
    from dapo_trainer.optim import build_optimizer
    from dapo_trainer.step import train_on_batch
    from dapo_trainer.synthetic import make_batch
    from dapo_trainer.train import setup_model

    from dapo.config import parse_config

    ctx = setup_distributed()
    config = parse_config(
        {
            "policy": {
                "model_name": model_dir,
                "precision": precision,
                "max_total_sequence_length": 64,
                "train_global_batch_size": 8,
                "train_micro_batch_size": 2,
                "generation": {"max_new_tokens": 32},
            },
            "grpo": {"num_prompts_per_step": 2, "num_generations_per_prompt": 4},
        }
    )
    info = read_model_info(model_dir, None)
    model = setup_model(config, info, ctx)
    optimizer, scheduler = build_optimizer(model, config.policy.optimizer)
    inside: dict[str, list[str]] = {"param": [], "activation": []}
    layer = model.decoder_layers[0]

    def before(module: torch.nn.Module, _args: Any) -> None:  # after FSDP2's own pre-forward (unshard)
        inside["param"] += [str(p.dtype) for p in module.parameters()]

    def after(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        inside["activation"].append(str(hidden.dtype))

    handles = [layer.register_forward_pre_hook(before), layer.register_forward_hook(after)]
    is_cuda = ctx.device.type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    batch = make_batch("probe", 0, num_sequences=8, vocab_size=info.vocab_size)
    result = train_on_batch(model, optimizer, scheduler, batch, config, ctx, info.pad_token_id)
    for handle in handles:
        handle.remove()
    shards = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    states = [
        t.to_local() if hasattr(t, "to_local") else t
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.dim() > 0
    ]
    facts = {
        "rank": ctx.rank,
        "world_size": dist.get_world_size(),
        "backend": str(dist.get_backend()),
        "param_devices": sorted({p.device.type for p in shards}),
        "master_dtypes": sorted({str(p.dtype) for p in shards}),
        "forward_param_dtypes": sorted(set(inside["param"])),
        "forward_activation_dtypes": sorted(set(inside["activation"])),
        "optimizer_state_devices": sorted({t.device.type for t in states}),
        "optimizer_state_dtypes": sorted({str(t.dtype) for t in states}),
        "cuda_max_memory_allocated": int(torch.cuda.max_memory_allocated(ctx.device)) if is_cuda else 0,
        "loss": result.metrics.get("train/loss"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(facts))
    teardown_distributed()
    return facts


def gpu_run_problems(ranks: list[dict[str, Any]], precision: str, world_size: int) -> list[str]:
    """Each way the ranks' facts differ from an NCCL run on CUDA in `precision`, float32 masters."""
    want = f"torch.{precision}"
    problems = [] if len(ranks) == world_size else [f"{len(ranks)} ranks reported, expected {world_size}"]
    for facts in ranks:
        rank = f"rank {facts['rank']}"
        expected = {
            "backend": "nccl",
            "param_devices": ["cuda"],
            "optimizer_state_devices": ["cuda"],
            "master_dtypes": ["torch.float32"],
            "optimizer_state_dtypes": ["torch.float32"],
            "forward_param_dtypes": [want],
            "forward_activation_dtypes": [want],
        }
        problems += [
            f"{rank}: {key} is {facts[key]}, expected {value}"
            for key, value in expected.items()
            if facts[key] != value
        ]
        if facts["cuda_max_memory_allocated"] <= 0:
            problems.append(
                f"{rank}: torch.cuda.max_memory_allocated() is {facts['cuda_max_memory_allocated']}"
            )
        if facts["rank"] == 0 and not (isinstance(facts["loss"], float) and math.isfinite(facts["loss"])):
            problems.append(f"{rank}: the loss is {facts['loss']}, expected a finite number")
    return problems


if __name__ == "__main__":
    probe(sys.argv[1], Path(sys.argv[2]), sys.argv[3])


def run_probe(model_dir: Path, out_dir: Path, precision: str, num_ranks: int) -> list[dict[str, Any]]:
    """Run the probe on `num_ranks` ranks under torchrun; every rank's facts, by rank."""
    import os
    import subprocess

    from dapo.local_redis import free_port

    reply = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={num_ranks}",
            f"--master_port={free_port()}", __file__, str(model_dir), str(out_dir), precision,
        ],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert reply.returncode == 0, (reply.stdout + reply.stderr)[-4000:]
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]

"""The process group: torchrun's environment (any number of ranks and nodes) or a single plain process.

NCCL when CUDA is available, gloo otherwise. Without torchrun the trainer still builds a one-rank
process group (an in-memory store), so the FSDP2 path is the same for one rank and for many.
Rank 0 is the only rank that talks to Redis and gRPC; it shares what it reads with `broadcast`.
A node is one torchrun agent (`GROUP_RANK`, its `node_rank`); its first local rank writes what the node
keeps once, such as the checkpoint files every node needs (dapo_trainer.checkpoint).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 sends a command at least every poll interval, so this only bites when a rank is stuck.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    node_rank: int = 0  # torchrun's GROUP_RANK: which node (agent) this rank runs on

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_node_first(self) -> bool:
        """Whether this is its node's first local rank (the one that writes the node's shared files)."""
        return self.local_rank == 0


def setup_distributed() -> DistContext:
    """Join torchrun's group (env://) or create a one-rank group; pick the device and backend."""
    has_cuda = torch.cuda.is_available()
    backend = "nccl" if has_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if has_cuda else torch.device("cpu")
    if has_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(
                backend, timeout=PROCESS_GROUP_TIMEOUT, device_id=device if has_cuda else None
            )
        else:
            dist.init_process_group(
                backend, store=dist.HashStore(), rank=0, world_size=1, timeout=PROCESS_GROUP_TIMEOUT
            )
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=backend,
        node_rank=int(os.environ.get("GROUP_RANK", "0")),
    )


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's `obj` on every rank (pickled; other ranks pass None)."""
    if ctx.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def gather_to_main(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's `obj`, as a list on rank 0 (None elsewhere)."""
    if ctx.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, as a list on every rank."""
    if ctx.world_size == 1:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()

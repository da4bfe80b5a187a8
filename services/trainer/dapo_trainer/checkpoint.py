"""Checkpoints: `checkpointing.checkpoint_dir/<run_id>/step_<version>/`.

Each holds the sharded model and optimizer state (torch.distributed.checkpoint, so a restore may use
a different number of ranks), every rank's RNG state, `trainer_state.json` (version, optimizer step,
scheduler state, the ledger of applied batches) and `hf/`, a Hugging Face export (safetensors, config,
tokenizer files) that transformers and vLLM load as it is.

Everything is written under `step_<version>.tmp/` and the directory is renamed last, so a checkpoint
cut off mid-write is never picked: only `step_<N>` directories count. With several nodes the
directory must be on a shared filesystem.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from dapo_trainer.distributed import DistContext, barrier, broadcast
from dapo_trainer.ledger import Ledger
from dapo_trainer.model import ModelInfo

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
HF_DIR = "hf"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Files of the model directory that are weights (replaced by ours) and never copied into an export.
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack)$|.*\.index\.json$")


@dataclass
class TrainerState:
    """What a checkpoint restores besides tensors."""

    version: int = 0
    optimizer_step: int = 0
    ledger: Ledger = field(default_factory=Ledger)


def checkpoint_root(checkpoint_dir: str, run_id: str) -> Path:
    return Path(checkpoint_dir) / run_id


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(version, path) of every committed checkpoint under `root`, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def export_hf(out_dir: Path, state_dict: dict[str, torch.Tensor], info: ModelInfo, dtype: str) -> None:
    """Write `state_dict` (HF names) as safetensors plus the model's config and tokenizer files."""
    from huggingface_hub import save_torch_state_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state_dict, out_dir, max_shard_size="5GB")
    for source_dir in dict.fromkeys([info.model_dir, info.tokenizer_dir]):
        for path in source_dir.iterdir():
            if path.is_file() and not _WEIGHT_FILE.match(path.name) and not (out_dir / path.name).exists():
                shutil.copy2(path, out_dir / path.name)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config or key == "dtype":
            config[key] = dtype
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def save_checkpoint(
    root: Path,
    state: TrainerState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    full_state_dict: dict[str, torch.Tensor],
    info: ModelInfo,
    export_dtype: str,
    ctx: DistContext,
    keep_top_k: int | None,
    metric_of: Mapping[int, float] | None = None,
    higher_is_better: bool = True,
) -> Path:
    """Collective: every rank calls it; rank 0 commits. `full_state_dict` is used on rank 0 only.

    Afterwards `keep_top_k` checkpoints survive, ranked by `metric_of[version]` when given (see
    `versions_to_keep`), plus the newest.
    """
    final = root / f"step_{state.version}"
    partial = root / f"step_{state.version}.tmp"
    if ctx.is_main:
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
    barrier(ctx)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(partial / "state"))
    torch.save(_rng_state(), partial / f"rng_rank{ctx.rank}.pt")
    barrier(ctx)
    if ctx.is_main:
        export_hf(partial / HF_DIR, full_state_dict, info, export_dtype)
        payload = {
            "version": state.version,
            "optimizer_step": state.optimizer_step,
            "world_size": ctx.world_size,
            "scheduler": scheduler.state_dict(),
            "ledger": state.ledger.to_json(),
        }
        (partial / STATE_FILE).write_text(json.dumps(payload, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _prune(root, keep_top_k, metric_of, higher_is_better)
        log.info("checkpoint %s committed (%d batches in the ledger)", final, len(state.ledger))
    barrier(ctx)
    return final


def versions_to_keep(
    versions: list[int],
    keep_top_k: int,
    metric_of: Mapping[int, float] | None = None,
    higher_is_better: bool = True,
) -> set[int]:
    """NeMo RL's retention: the best `keep_top_k` by metric (ties and versions without a value ranked by
    recency, after every version with one), or the newest `keep_top_k` without a metric; and the newest
    always, since a restart resumes from it."""
    if not versions:
        return set()
    if metric_of is None:
        ranked = sorted(versions, reverse=True)
    else:
        sign = 1.0 if higher_is_better else -1.0

        def key(version: int) -> tuple[bool, float, int]:
            has = version in metric_of
            return (has, sign * metric_of[version] if has else 0.0, version)

        ranked = sorted(versions, key=key, reverse=True)
    return set(ranked[:keep_top_k]) | {max(versions)}


def _prune(
    root: Path, keep_top_k: int | None, metric_of: Mapping[int, float] | None, higher_is_better: bool
) -> None:
    for path in root.glob("step_*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    if keep_top_k is None:
        return
    found = complete_checkpoints(root)
    keep = versions_to_keep([v for v, _ in found], keep_top_k, metric_of, higher_is_better)
    for version, path in found:
        if version not in keep:
            shutil.rmtree(path)


def restore_latest(
    root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistContext,
) -> tuple[TrainerState, Path | None]:
    """Load the newest committed checkpoint under `root` (collective); a fresh state if there is none."""
    latest = complete_checkpoints(root)[-1][1] if ctx.is_main and complete_checkpoints(root) else None
    latest = broadcast(str(latest) if latest else None, ctx)
    if latest is None:
        return TrainerState(), None
    path = Path(latest)
    payload = json.loads((path / STATE_FILE).read_text())
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state_dict: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    dcp.load(state_dict, checkpoint_id=str(path / "state"))
    set_state_dict(
        model, optimizer, model_state_dict=state_dict["model"], optim_state_dict=state_dict["optim"]
    )
    scheduler.load_state_dict(payload["scheduler"])
    rng_file = path / f"rng_rank{ctx.rank}.pt"
    if rng_file.is_file():  # absent when restoring on more ranks than saved
        _set_rng_state(torch.load(rng_file, weights_only=False))
    state = TrainerState(
        version=int(payload["version"]),
        optimizer_step=int(payload["optimizer_step"]),
        ledger=Ledger.from_json(payload["ledger"]),
    )
    return state, path


def _rng_state() -> dict[str, object]:
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["cpu"])  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])  # type: ignore[arg-type]

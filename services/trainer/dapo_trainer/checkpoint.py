"""Checkpoints: `<node directory>/<run_id>/step_<version>/`, written per node, no shared filesystem needed.

The node directory is `checkpointing.checkpoint_dir`, with `{node_rank}` (if present) replaced by the
node's rank (torchrun's GROUP_RANK). Without the placeholder every node uses the same path: each node's
own volume (a Helm StatefulSet pod's PVC, a Slurm node's local disk) or one shared directory; both work,
and so does a mix. The placeholder keeps nodes apart when they share a filesystem or a host.

A checkpoint holds:
- `state/`: the sharded tensors (torch.distributed.checkpoint). Every rank writes its own shards into its
  node's directory; DCP's `.metadata`, written by rank 0, is copied to every node.
- `replicated.pt`: what every rank holds whole (optimizer scalars such as Adam's `step`, param groups,
  unsharded buffers). DCP would store each of these once, in one rank's file on one node; kept apart,
  every node has them.
- `rng_rank<r>.pt`: rank r's RNG state, on its node.
- `trainer_state.json`: version, optimizer step, world size, scheduler state and the ledger of applied
  batches, on every node (every rank holds the same; each node's first local rank writes it).
- `hf/`: a Hugging Face export (safetensors, config, tokenizer files) that transformers and vLLM load as
  it is, written once, by rank 0, on node 0.

Commit: everything is written under `step_<version>.tmp/`; after a barrier each node's first local rank
renames its node's `.tmp` to `step_<version>` (in a shared directory the first one renames and the others
find it done). Only `step_<N>` directories count, so a checkpoint cut off mid-write is never picked.

Resume: each rank lists the checkpoints it can restore from its own directory (committed, with its own
RNG file, i.e. its shards were written there; after a change of world size, with every file DCP's
metadata names), the ranks agree on the newest version all of them can restore, and each node discards
what is newer (a commit that did not reach every node) and any `.tmp`. Retention (`keep_top_k`) runs per
node on the same ranking. Limits: on node-own volumes a restore needs the world size and the node ranks
of the save (torchrun's c10d rendezvous orders nodes by host name, so a StatefulSet's pods keep theirs);
DCP re-shards to another world size only where every rank sees every shard (a shared directory). When
some ranks find checkpoints and no version is restorable by all, the restore fails naming what each
rank found, instead of silently starting over.
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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

from dapo.config import RunConfig
from dapo_trainer.distributed import DistContext, all_gather, barrier, broadcast
from dapo_trainer.ledger import Ledger
from dapo_trainer.model import ModelInfo

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
HF_DIR = "hf"
SHARDS_DIR = "state"
REPLICATED_FILE = "replicated.pt"
NODE_RANK_PLACEHOLDER = "{node_rank}"
_STEP_DIR = re.compile(r"^step_(\d+)$")
# Files of the model directory that are weights (replaced by ours) and never copied into an export.
_WEIGHT_FILE = re.compile(r".*\.(safetensors|bin|pt|pth|ckpt|h5|msgpack)$|.*\.index\.json$")
# The optimizer state flattened to one level, so that it splits into sharded and replicated entries.
_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


@dataclass
class TrainerState:
    """What a checkpoint restores besides tensors."""

    version: int = 0
    optimizer_step: int = 0
    ledger: Ledger = field(default_factory=Ledger)


def is_checkpoint_due(version: int, config: RunConfig) -> bool:
    """NeMo RL's checkpointing: every `save_period` steps and at the last step, when enabled."""
    checkpointing = config.checkpointing
    return checkpointing.enabled and (
        version % checkpointing.save_period == 0 or version == config.grpo.max_num_steps
    )


def checkpoint_root(checkpoint_dir: str, run_id: str, node_rank: int = 0) -> Path:
    """The directory node `node_rank` keeps run `run_id`'s checkpoints in."""
    return Path(checkpoint_dir.replace(NODE_RANK_PLACEHOLDER, str(node_rank))) / run_id


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
    """Collective: every rank calls it with its node's `root`; each node commits its own copy.

    `full_state_dict` (the export) and `metric_of` are used on rank 0 only. Afterwards `keep_top_k`
    checkpoints survive on every node, ranked by `metric_of[version]` when given (see
    `versions_to_keep`), plus the newest.
    """
    final = root / f"step_{state.version}"
    partial = root / f"step_{state.version}.tmp"
    if ctx.is_node_first:  # leftovers of an attempt that never committed on every node
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
    barrier(ctx)  # every node's removals are done before any node writes (a shared directory)
    if ctx.is_node_first:
        (partial / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    sharded, replicated = _split(*get_state_dict(model, optimizer, options=_FLAT))
    dcp.save(sharded, checkpoint_id=str(partial / SHARDS_DIR))
    torch.save(_rng_state(), partial / f"rng_rank{ctx.rank}.pt")
    dcp_files = broadcast(_dcp_global_files(partial / SHARDS_DIR) if ctx.is_main else None, ctx)
    metric_of = broadcast(dict(metric_of) if ctx.is_main and metric_of is not None else None, ctx)
    if ctx.is_node_first:
        for name, data in dcp_files.items() if not ctx.is_main else ():
            _write_atomic(partial / SHARDS_DIR / name, data, ctx)
        _save_atomic(replicated, partial / REPLICATED_FILE, ctx)
        payload = {
            "version": state.version,
            "optimizer_step": state.optimizer_step,
            "world_size": ctx.world_size,
            "scheduler": scheduler.state_dict(),
            "ledger": state.ledger.to_json(),
        }
        _write_atomic(partial / STATE_FILE, json.dumps(payload, indent=1).encode(), ctx)
    if ctx.is_main:
        export_hf(partial / HF_DIR, full_state_dict, info, export_dtype)
    barrier(ctx)  # every rank's files are written on every node
    if ctx.is_node_first:
        _commit(partial, final)
        _prune(root, keep_top_k, metric_of, higher_is_better)
        log.info(
            "checkpoint %s committed on node %d (%d batches in the ledger)",
            final,
            ctx.node_rank,
            len(state.ledger),
        )
    barrier(ctx)
    return final


def _split(
    model_sd: dict[str, Any], optim_sd: dict[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """({"model", "optim"} DTensor entries, the same keys' other entries): sharded and replicated."""
    parts = {"model": model_sd, "optim": optim_sd}
    sharded = {k: {n: v for n, v in sd.items() if isinstance(v, DTensor)} for k, sd in parts.items()}
    replicated = {k: {n: v for n, v in sd.items() if not isinstance(v, DTensor)} for k, sd in parts.items()}
    return sharded, replicated


def _dcp_global_files(shards_dir: Path) -> dict[str, bytes]:
    """Rank 0: the files DCP's coordinator wrote (its `.metadata`), which every node needs."""
    return {p.name: p.read_bytes() for p in shards_dir.iterdir() if p.is_file() and p.suffix != ".distcp"}


def _write_atomic(path: Path, data: bytes, ctx: DistContext) -> None:
    """Write `path` whole or not at all; several nodes may write the same bytes into a shared directory."""
    tmp = path.with_name(f"{path.name}.rank{ctx.rank}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_atomic(obj: object, path: Path, ctx: DistContext) -> None:
    tmp = path.with_name(f"{path.name}.rank{ctx.rank}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _commit(partial: Path, final: Path) -> None:
    try:
        os.replace(partial, final)
    except FileNotFoundError:
        if not (final / STATE_FILE).is_file():
            raise
        # A shared directory: another node's first rank committed it first.


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
    """Drop stale `.tmp` directories and the checkpoints retention does not keep (in a shared directory
    several nodes may do the same removals at once: errors from a removal that lost the race are ignored)."""
    for path in root.glob("step_*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    if keep_top_k is None:
        return
    found = complete_checkpoints(root)
    keep = versions_to_keep([v for v, _ in found], keep_top_k, metric_of, higher_is_better)
    for version, path in found:
        if version not in keep:
            shutil.rmtree(path, ignore_errors=True)


def restorable_versions(root: Path, ctx: DistContext) -> list[int]:
    """Versions of the committed checkpoints under `root` (this rank's node directory) that this rank
    can restore: its own shards are there (same world size), or every shard is (another world size)."""
    found = []
    for version, path in complete_checkpoints(root):
        if not (path / REPLICATED_FILE).is_file():
            continue
        saved_world_size = int(json.loads((path / STATE_FILE).read_text())["world_size"])
        if saved_world_size == ctx.world_size:
            if (path / f"rng_rank{ctx.rank}.pt").is_file():
                found.append(version)
        elif _has_every_shard(path / SHARDS_DIR):
            found.append(version)
    return found


def _has_every_shard(shards_dir: Path) -> bool:
    metadata = dcp.FileSystemReader(str(shards_dir)).read_metadata()
    names = {info.relative_path for info in (metadata.storage_data or {}).values()}
    return all((shards_dir / name).is_file() for name in names)


def agree_on_version(root: Path, ctx: DistContext) -> int | None:
    """Collective: the newest version every rank can restore from its own directory; None when no rank
    has a committed checkpoint. Raises (on every rank alike) when some have one but none is common."""
    committed = [v for v, _ in complete_checkpoints(root)]
    seen = all_gather((ctx.rank, ctx.node_rank, str(root), committed, restorable_versions(root, ctx)), ctx)
    common = set.intersection(*(set(restorable) for *_, restorable in seen))
    if common:
        return max(common)
    if any(found for *_, found, _ in seen):
        per_rank = "; ".join(
            f"rank {rank} (node {node}, {path}): committed {found}, restorable {restorable}"
            for rank, node, path, found, restorable in seen
        )
        raise ValueError(
            "checkpointing.checkpoint_dir: no checkpoint can be restored by every rank, so the run cannot "
            f"resume ({per_rank}). A restore needs each rank's own shards in its node's directory (the "
            "world size and node ranks of the save) or, on another world size, every shard in every "
            "rank's directory (a shared filesystem). Restore those directories, or remove the run's "
            "checkpoints to start it over."
        )
    return None


def restore_latest(
    root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ctx: DistContext,
) -> tuple[TrainerState, Path | None]:
    """Collective: load the newest checkpoint every rank can restore (each from its node's `root`), or
    return a fresh state if no rank has one. Each node first discards what is newer and any `.tmp`."""
    version = agree_on_version(root, ctx)
    if ctx.is_node_first:
        _discard_after(root, version)
    if version is None:
        return TrainerState(), None
    path = root / f"step_{version}"
    payload = json.loads((path / STATE_FILE).read_text())
    sharded, replicated = _split(*get_state_dict(model, optimizer, options=_FLAT))
    dcp.load(sharded, checkpoint_id=str(path / SHARDS_DIR))
    saved = torch.load(path / REPLICATED_FILE, weights_only=True)
    for part, entries in replicated.items():
        missing = sorted(set(entries) - set(saved[part]))
        if missing:
            raise ValueError(f"checkpoint {path}: {REPLICATED_FILE} lacks {part} entries {missing[:5]}")
    set_state_dict(
        model,
        optimizer,
        model_state_dict={**sharded["model"], **saved["model"]},
        optim_state_dict={**sharded["optim"], **saved["optim"]},
        options=_FLAT,
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


def _discard_after(root: Path, version: int | None) -> None:
    """Remove `.tmp` directories and committed checkpoints newer than `version` (all with None): a
    commit some node did not reach, which a later save of that version replaces."""
    for path in root.glob("step_*.tmp"):
        shutil.rmtree(path, ignore_errors=True)
    for found, path in complete_checkpoints(root):
        if version is None or found > version:
            log.info("discarding %s: not committed on every node", path)
            shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, object]:
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, object]) -> None:
    torch.set_rng_state(state["cpu"])  # type: ignore[arg-type]
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])  # type: ignore[arg-type]

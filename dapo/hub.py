"""Find a Hugging Face model (or dataset) by hub id in the local Hugging Face cache, never the network.

The cache is where `huggingface_hub` puts downloads: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
`$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. A repository `org/name` lives in
`models--org--name/` (`datasets--org--name/` for datasets); `refs/main` holds the revision whose
files are in `snapshots/<revision>/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

Kind = Literal["model", "dataset"]


class NotInCacheError(FileNotFoundError):
    """A model named by hub id is neither a directory nor in the local cache; the message says how to fix it."""


def hub_cache_dir() -> Path:
    """The cache directory `huggingface_hub` would use with this environment."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "hub"


def cached_snapshot(repo_id: str, kind: Kind = "model", revision: str = "main") -> Path | None:
    """The snapshot directory of `repo_id` in the cache, or None."""
    parts = repo_id.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        return None
    repo = hub_cache_dir() / f"{kind}s--{parts[0]}--{parts[1]}"
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if snapshot.is_dir():
        return snapshot
    snapshots = sorted(
        (p for p in (repo / "snapshots").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime
    )
    return snapshots[-1] if len(snapshots) == 1 else None


def resolve_model_dir(name: str, what: str = "policy.model_name") -> Path:
    """`name` as a local directory, or the cached snapshot of hub id `name`; NotInCacheError otherwise."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    cache = hub_cache_dir()
    raise NotInCacheError(
        f"{what} {name!r} is neither a directory nor in the local Hugging Face cache (looked for "
        f"{path.resolve()} and {cache / ('models--' + name.replace('/', '--'))}/snapshots/); nothing is "
        f"downloaded. Provide it with `huggingface-cli download {name}` on a machine with hub access "
        f"(then copy {cache} here or set HF_HOME / HF_HUB_CACHE to it), or set {what} to a model directory"
    )

"""A Hugging Face cache directory laid out as huggingface_hub writes it, holding a local model under a hub id."""

from __future__ import annotations

from pathlib import Path


def fake_hub_cache(root: Path, repo_id: str, model_dir: Path, revision: str = "0123abcd") -> Path:
    """`root` becomes an HF_HOME whose hub cache holds `model_dir`'s files as `repo_id`; returns the snapshot."""
    org, name = repo_id.split("/")
    repo = root / "hub" / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for path in model_dir.iterdir():
        if path.is_file():
            (snapshot / path.name).symlink_to(path.resolve())
    return snapshot

"""Write a run's metrics where people look: JSONL (one object per step), TensorBoard and a PNG (W&B is
logged live by the controller: dapo_controller.wandb_log).

Records arrive from several sources (controller, trainer, validation) with a `step` each; they are
merged into one object per step. Keys look like `train/reward`, `val/accuracy`, `time/generate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PLOTS = [
    ("train/reward", "reward (train)"),
    ("val/accuracy", "accuracy (validation)"),
    ("train/entropy", "entropy"),
    ("train/clip_high_frac", "clip fraction high"),
    ("train/clip_low_frac", "clip fraction low"),
    ("train/response_length", "response length (tokens)"),
]


def merge_by_step(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per step, later records overriding earlier ones key by key; sorted by step."""
    merged: dict[int, dict[str, Any]] = {}
    for record in records:
        step = int(record["step"])
        row = merged.setdefault(step, {"step": step})
        row.update({k: v for k, v in record.items() if k not in ("source", "step")})
    return [merged[s] for s in sorted(merged)]


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


def _numeric(rows: list[dict[str, Any]]) -> Iterable[tuple[int, str, float]]:
    for row in rows:
        for key, value in row.items():
            if (
                key != "step"
                and isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                yield row["step"], key, float(value)


def write_tensorboard(rows: list[dict[str, Any]], log_dir: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(log_dir))
    try:
        for step, key, value in _numeric(rows):
            writer.add_scalar(key, value, step)
    finally:
        writer.close()


def plot_run(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """A PNG with one panel per curve of PLOTS (panels without data say so)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label) in zip(axes.flat, PLOTS, strict=True):
        points = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), int | float)]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if key.startswith("val/") else None, markersize=4)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

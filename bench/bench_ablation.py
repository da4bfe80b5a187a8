"""DAPO's ablations at tiny scale: clip-higher, dynamic sampling, overlong shaping and one step of
staleness, over seeds.

Each arm is a README run (`--task addition`: `examples/configs/tiny_cpu.yaml` on examples/tiny-model;
`--task column-addition`: `examples/configs/tiny_reasoning_cpu.yaml` on examples/tiny-reasoning-model,
whose worked answers run to tens of tokens) with one change, launched with `dapo run` (real services,
as local processes) once per seed; arms are interleaved seed by seed so a busy machine slows them
alike. Per run it reads the run's metrics.jsonl and reports: the final and best held-out greedy
accuracy, the first step whose validation reaches `--target`, the mean training entropy over the last
half of the steps, the mean upper and lower clip fractions, the response length and truncation rate of
the sampled answers (first and last fifth of the steps), the wall clock of the run (the `dapo run`
process), and the mean generation rounds per step. With `--plot` it draws accuracy, entropy, clip
fraction, response length and truncation rate over steps, one curve per arm (mean over seeds), to a PNG.

    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python bench/bench_ablation.py \
        --seeds 0,1,2 --steps 30 --val-period 5 --target 0.85 --out results/ablation

Arms: `clip_higher` (0.2 / 0.28, dynamic sampling, synchronous: the README's run), `symmetric`
(0.2 / 0.2), `no_dynamic_sampling`, `no_overlong_shaping` (no soft overlong punishment and no overlong
filtering; the addition config has neither), `soft_penalty_no_filter` (the soft punishment without
overlong filtering: separates the two), `stale_1` (grpo.max_staleness=1), `stale_1_tis` (the same
with truncated importance sampling against the rollout log-probs,
`loss_fn.use_importance_sampling_correction`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = {  # --task: (config, model directory)
    "addition": ("examples/configs/tiny_cpu.yaml", "examples/tiny-model"),
    "column-addition": ("examples/configs/tiny_reasoning_cpu.yaml", "examples/tiny-reasoning-model"),
}
SERIES = {  # metric -> (plot title, source key)
    "val/accuracy": "held-out greedy accuracy",
    "train/entropy": "entropy (train)",
    "train/clip_high_frac": "upper clip fraction",
    "train/clip_low_frac": "lower clip fraction",
    "train/response_length": "response length (tokens, sampled)",
    "train/truncated_frac": "truncated fraction (sampled)",
}
ARMS: dict[str, list[str]] = {
    "clip_higher": [],
    "symmetric": ["grpo.ratio_clip_max=0.2", "loss_fn.ratio_clip_max=0.2"],
    "no_dynamic_sampling": ["grpo.use_dynamic_sampling=false"],
    "no_overlong_shaping": ["grpo.reward_shaping.enabled=false", "grpo.overlong_filtering=false"],
    # the soft overlong punishment alone: truncated answers stay in the loss (as wrong answers)
    "soft_penalty_no_filter": ["grpo.overlong_filtering=false"],
    "stale_1": ["grpo.max_staleness=1"],
    # one step stale, with truncated importance sampling against the behaviour policy's log-probs
    "stale_1_tis": ["grpo.max_staleness=1", "loss_fn.use_importance_sampling_correction=true"],
}


def base_overrides(args: argparse.Namespace, seed: int, work: Path) -> list[str]:
    """The README run from `args.model`, `seed`, `args.steps` steps validated every `args.val_period`,
    logging under `work`, without TensorBoard or checkpoints (bench/bench_overlap.py uses them too)."""
    return [
        f"policy.model_name={args.model}",
        f"data.train_file={args.model}/data/train.jsonl",
        f"data.validation_file={args.model}/data/test.jsonl",
        f"grpo.seed={seed}",
        f"grpo.max_num_steps={args.steps}",
        f"grpo.val_period={args.val_period}",
        f"logger.log_dir={work}/logs",
        "logger.tensorboard_enabled=false",
        "checkpointing.enabled=false",
    ]


def run_arm(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    work = out / f"{arm}-seed{seed}"
    overrides = [*base_overrides(args, seed, work), *ARMS[arm]]
    started = time.perf_counter()
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/dapo"), "run", str(ROOT / args.config), *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall_s = time.perf_counter() - started
    match = re.search(r"run (\w+) submitted", proc.stdout)
    if proc.returncode != 0 or match is None:
        return {"arm": arm, "seed": seed, "failed": (proc.stdout + proc.stderr)[-2000:], "wall_s": wall_s}
    records = [
        json.loads(line)
        for line in (work / "logs" / match.group(1) / "metrics.jsonl").read_text().splitlines()
    ]
    val = {r["step"]: r["val/accuracy"] for r in records if "val/accuracy" in r}
    train = [r for r in records if "train/entropy" in r]
    late = train[len(train) // 2 :]
    reached = [step for step, acc in sorted(val.items()) if acc >= args.target]
    series = {
        key: {int(r["step"]): float(r[key]) for r in records if isinstance(r.get(key), int | float)}
        for key in SERIES
    }
    return {
        "arm": arm,
        "seed": seed,
        "wall_s": round(wall_s, 1),
        "val": val,
        "initial": val.get(0),
        "final": val[max(val)],
        "best": max(val.values()),
        "steps_to_target": reached[0] if reached else None,
        "entropy_late": statistics.mean(r["train/entropy"] for r in late),
        "generation_rounds": statistics.mean(
            r.get("train/generation_rounds", 1) for r in records if "train/generation_rounds" in r
        ),
        "clip_high": _mean(series["train/clip_high_frac"].values()),
        "clip_low": _mean(series["train/clip_low_frac"].values()),
        "length_first": _fifth(series["train/response_length"], first=True),
        "length_last": _fifth(series["train/response_length"], first=False),
        "truncated_first": _fifth(series["train/truncated_frac"], first=True),
        "truncated_last": _fifth(series["train/truncated_frac"], first=False),
        "series": series,
    }


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.mean(values) if values else float("nan")


def _fifth(by_step: dict[int, float], first: bool) -> float:
    """Mean over the first (or last) fifth of the steps, at least one step."""
    steps = sorted(by_step)
    n = max(1, len(steps) // 5)
    return _mean(by_step[s] for s in (steps[:n] if first else steps[-n:]))


def summarise(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"| arm | seeds | final acc (median) | best acc | steps to {args.target:.0%} (median; - = not reached) "
        "| late entropy (mean) | clip high / low (mean) | response tokens, first -> last fifth "
        "| truncated, first -> last fifth | wall s (median) | gen rounds / step |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        rows = [r for r in results if r["arm"] == arm and "failed" not in r]
        if not rows:
            continue
        steps = [r["steps_to_target"] for r in rows]
        reached = sorted(s for s in steps if s is not None)
        finals_text = ", ".join(f"{r['final']:.3f}" for r in rows)
        steps_text = ", ".join("-" if s is None else str(s) for s in steps)
        median_steps = statistics.median(reached) if len(reached) * 2 > len(rows) else None
        lines.append(
            f"| {arm} | {len(rows)} | {statistics.median(r['final'] for r in rows):.3f} "
            f"({finals_text}) | {max(r['best'] for r in rows):.3f} "
            f"| {median_steps if median_steps is not None else '-'} ({steps_text}) "
            f"| {statistics.mean(r['entropy_late'] for r in rows):.3f} "
            f"| {_mean(r['clip_high'] for r in rows):.4f} / {_mean(r['clip_low'] for r in rows):.4f} "
            f"| {_mean(r['length_first'] for r in rows):.1f} -> {_mean(r['length_last'] for r in rows):.1f} "
            f"| {_mean(r['truncated_first'] for r in rows):.3f} -> {_mean(r['truncated_last'] for r in rows):.3f} "
            f"| {statistics.median(r['wall_s'] for r in rows):.0f} "
            f"| {statistics.mean(r['generation_rounds'] for r in rows):.2f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    """One panel per metric of SERIES, one curve per arm: the mean over its seeds at each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, label) in zip(axes.flat, SERIES.items(), strict=True):
        for arm in ARMS:
            runs = [r["series"][key] for r in results if r["arm"] == arm and "failed" not in r]
            steps = sorted(set.intersection(*(set(run) for run in runs))) if runs else []
            if steps:
                ys = [statistics.mean(run[s] for run in runs) for s in steps]
                ax.plot(
                    steps, ys, label=f"{arm} ({len(runs)})", marker="o" if key.startswith("val/") else None
                )
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task", choices=sorted(TASKS), default="addition", help="which README run to ablate"
    )
    parser.add_argument("--config", default=None, help="run config (default: the task's)")
    parser.add_argument("--model", default=None, help="model directory (default: the task's)")
    parser.add_argument("--plot", default=None, help="write the curves of every arm to this PNG")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: print the table and draw the plot of OUT/results.json",
    )
    parser.add_argument(
        "--append", action="store_true", help="add to the runs already in OUT/results.json (not rerun)"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--val-period", type=int, default=5)
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--out", default=str(ROOT / "results/ablation"))
    args = parser.parse_args()
    args.config = args.config or TASKS[args.task][0]
    args.model = args.model or str(ROOT / TASKS[args.task][1])
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown {unknown}; expected some of {list(ARMS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((out / "results.json").read_text()) if args.append or args.report_only else []
    for r in results:  # JSON made the step keys strings
        r["series"] = {
            k: {int(s): v for s, v in by_step.items()} for k, by_step in r.get("series", {}).items()
        }
    for seed in [] if args.report_only else (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            result = run_arm(arm, seed, args, out)
            results.append(result)
            print(json.dumps(result), flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(summarise(results, args))
    if args.plot:
        seeds = ",".join(str(s) for s in sorted({r["seed"] for r in results}))  # with --append: all of them
        plot(results, Path(args.plot), f"{args.task}: {args.steps} steps, seeds {seeds}")
    exit_if_failed(results)


def exit_if_failed(results: list[dict]) -> None:
    """Exit 1, saying how many, if any run failed (its record holds a "failed" log tail)."""
    failed = [r for r in results if "failed" in r]
    if failed:
        print(f"{len(failed)} run(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

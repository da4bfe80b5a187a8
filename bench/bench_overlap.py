"""dapo synchronous, dapo asynchronous (generation overlapping training) and TRL: time to accuracy.

One script run, arms interleaved seed by seed so that a busy machine slows them alike:

    bash bench/setup_trl_env.sh            # once: .venv-trl for the TRL arm
    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python bench/bench_overlap.py \
        --seeds 0,1,2 --steps 60 --trl-budget-s 200 --out results/overlap

- `sync`: the README's run (`examples/configs/tiny_cpu.yaml`, `grpo.max_staleness=0`), launched with
  `dapo run` from this tree (real services as local processes, the launcher's CPU sets as configured).
- `async`: the same with `grpo.max_staleness=1` (the importance correction against the behaviour policy
  follows it by default): the controller generates batch s+1 while the trainer trains batch s.
- `trl`: bench/bench_trl.py (TRL's GRPOTrainer, loss_type="dapo", the same hyper-parameters) in .venv-trl.
- `sync_as_trl` (only when asked for with --arms): `sync` doing what TRL's step does, no dynamic
  sampling (every group of one round of 16 prompts kept) and no dual clip: learning per step compared
  with TRL's on the same algorithm.

Both dapo arms validate every `--val-period` steps (200 held-out problems, greedy) and checkpoint
nothing; TRL evaluates on the same grid (every 2 x `--val-period` optimizer steps: the first crossing of
a noisy target depends on the grid, so both arms must share it). dapo's clock runs from the start of the
first training batch to the publication of the version a validation measured (the trainer's
`trainer/started_at` / `trainer/published_at`), validations included; TRL's clock is training only
(its evaluations excluded), which favours TRL. Per arm: time and steps (batches of 2 optimizer steps) to
each target, the median wall time a step, and for dapo the
medians of generation (controller: generate + score), training (trainer: forward, backward, optimizer,
gather, publish) and the trainer's wait for a batch, measured in the same run, with step / max(gen, train).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_ablation import base_overrides, exit_if_failed  # noqa: E402  (the same README-run overrides)

SERVICE_PATHS = [ROOT, *(ROOT / "services" / s for s in ("controller", "reward", "rollout", "trainer"))]
DAPO_ARMS: dict[str, list[str]] = {
    "sync": ["grpo.max_staleness=0"],
    "async": ["grpo.max_staleness=1"],
    # TRL's step exactly: one round of 16 prompts, every group kept, no dual clip (not in the default arms).
    "sync_as_trl": ["grpo.max_staleness=0", "grpo.use_dynamic_sampling=false", "loss_fn.ratio_clip_c=null"],
}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def dapo_env() -> dict[str, str]:
    """This tree's packages first on the path, whatever the virtualenv's editable install points at."""
    path = os.pathsep.join(str(p) for p in SERVICE_PATHS)
    extra = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{extra}" if extra else path}


def analyse_dapo(records: list[dict[str, Any]], targets: list[float]) -> dict[str, Any]:
    """Time/steps to each target and the per-step time split, from a run's merged metrics.jsonl rows."""
    by_step = {int(r["step"]): r for r in records}
    trained = sorted(s for s, r in by_step.items() if "trainer/published_at" in r)
    if not trained:
        raise ValueError("no trainer records with trainer/published_at in the run's metrics")
    t0 = by_step[trained[0]]["trainer/started_at"]
    # Version v is published by the trainer record of step v - 1; validation of step s measures version s.
    # An asynchronous trainer publishes in the background: its version is out that much later (the
    # duration comes with the next batch's record).
    version_at = {
        s + 1: by_step[s]["trainer/published_at"]
        - t0
        + by_step.get(s + 1, {}).get("trainer/background_publish_s", 0.0)
        for s in trained
    }
    version_at[0] = 0.0
    val = {s: r["val/accuracy"] for s, r in sorted(by_step.items()) if "val/accuracy" in r}
    reached: dict[str, Any] = {}
    for target in targets:
        step = next((s for s, acc in val.items() if acc >= target and s in version_at), None)
        reached[f"{target:.2f}"] = (
            {"step": step, "optimizer_steps": 2 * step, "time_s": round(version_at[step], 1)}
            if step is not None
            else None
        )
    published = [version_at[s + 1] for s in trained]
    steady = trained[1:]  # the first batch's start-up (compilation, first push) is not a step
    generation = [
        by_step[s]["time/generate"] + by_step[s].get("time/reward", 0.0)
        for s in steady
        if "time/generate" in by_step[s]
    ]
    training = [by_step[s]["time/train_step"] for s in steady if "time/train_step" in by_step[s]]
    step_time = _median([b - a for a, b in zip(published, published[1:], strict=False)])
    gen_m, train_m = _median(generation), _median(training)
    bound = max(gen_m or 0.0, train_m or 0.0)

    def part(key: str) -> float | None:
        return _median([by_step[s][key] for s in steady if key in by_step[s]])

    return {
        "val": val,
        "reached": reached,
        "final": val[max(val)],
        "steps": len(trained),
        "train_s": round(published[-1], 1),
        "step_s": step_time,
        "generation_s": gen_m,
        "training_s": train_m,
        "step_over_max": round(step_time / bound, 2) if step_time and bound else None,
        "parts": {
            key: part(key)
            for key in (
                "time/generate",
                "time/reward",
                "time/wait_trainer",
                "time/wait_data",
                "time/forward",
                "time/backward",
                "time/optimizer",
                "time/gather",
                "time/publish",
                "trainer/background_publish_s",
                "time/build_commit",
                "queue/trainer_version_at_commit",
                "time/validation",
                "train/generation_rounds",
                "train/staleness",
            )
        },
    }


def run_dapo(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    work = out / f"{arm}-seed{seed}"
    overrides = [*base_overrides(args, seed, work), *DAPO_ARMS[arm], *args.dapo_override]
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dapo.cli", "run", str(ROOT / "examples/configs/tiny_cpu.yaml"), *overrides],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dapo_env(),
    )
    wall_s = round(time.perf_counter() - started, 1)
    (work / "dapo-run.log").write_text(proc.stdout + proc.stderr)
    match = re.search(r"run (\w+) submitted", proc.stdout)
    if proc.returncode != 0 or match is None:
        return {"arm": arm, "seed": seed, "failed": (proc.stdout + proc.stderr)[-2000:], "wall_s": wall_s}
    lines = (work / "logs" / match.group(1) / "metrics.jsonl").read_text().splitlines()
    affinity = next((line for line in proc.stderr.splitlines() if "CPU affinity" in line), "")
    result = analyse_dapo([json.loads(line) for line in lines], args.targets)
    return {"arm": arm, "seed": seed, "wall_s": wall_s, "affinity": affinity, **result}


def analyse_trl(record: dict[str, Any], targets: list[float]) -> dict[str, Any]:
    evals = record["evals"]
    reached: dict[str, Any] = {}
    for target in targets:
        hit = next((e for e in evals if e["accuracy"] >= target), None)
        reached[f"{target:.2f}"] = (
            {"step": hit["step"] / 2, "optimizer_steps": hit["step"], "time_s": hit["train_s"]}
            if hit
            else None
        )
    steps = record["optimizer_steps"]
    return {
        "val": {e["train_s"]: e["accuracy"] for e in evals},
        "reached": reached,
        "final": evals[-1]["accuracy"],
        "steps": steps / 2,
        "train_s": record["train_s"],
        # A generation batch of 16 x 8 and its two optimizer steps: the same unit as a dapo step.
        "step_s": round(2 * record["train_s"] / steps, 3) if steps else None,
    }


def run_trl(seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    python = ROOT / ".venv-trl/bin/python"
    if not python.exists():
        return {"arm": "trl", "seed": seed, "failed": f"{python} missing: run bash bench/setup_trl_env.sh"}
    record_path = out / f"trl-seed{seed}.json"
    started = time.perf_counter()
    proc = subprocess.run(
        [
            str(python),
            str(ROOT / "bench/bench_trl.py"),
            f"--model={args.model}",
            f"--budget-s={args.trl_budget_s}",
            # On dapo's validation grid (val_period generation batches = 2 x val_period optimizer
            # steps) unless a period in seconds is asked for: the first crossing of a target depends on it.
            f"--eval-every-s={args.trl_eval_every_s}"
            if args.trl_eval_every_s
            else f"--eval-every-steps={2 * args.val_period}",
            f"--seed={seed}",
            f"--out={record_path}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    wall_s = round(time.perf_counter() - started, 1)
    if proc.returncode != 0:
        return {"arm": "trl", "seed": seed, "failed": (proc.stdout + proc.stderr)[-2000:], "wall_s": wall_s}
    record = json.loads(record_path.read_text())
    return {"arm": "trl", "seed": seed, "wall_s": wall_s, **analyse_trl(record, args.targets)}


def summarise(results: list[dict[str, Any]], targets: list[float]) -> str:
    """A Markdown table per arm (medians over seeds) and the targets' ratios."""
    ok = [r for r in results if "failed" not in r]
    arms = [a for a in (*DAPO_ARMS, "trl") if any(r["arm"] == a for r in ok)]
    head = " | ".join(f"time to {t:.0%} s (seeds) | steps to {t:.0%}" for t in targets)
    lines = [
        f"| arm | seeds | {head} | step s | generation s | training s | step / max(gen, train) | final acc |",
        "|---|---|" + "---|---|" * len(targets) + "---|---|---|---|---|",
    ]
    medians: dict[tuple[str, str], float | None] = {}
    for arm in arms:
        rows = [r for r in ok if r["arm"] == arm]
        cells = []
        for t in targets:
            key = f"{t:.2f}"
            hits = [r["reached"][key] for r in rows]
            times = [h["time_s"] for h in hits if h]
            # The median over seeds counts a seed that never reached the target as the slowest.
            median = statistics.median(times) if len(times) * 2 > len(rows) else None
            medians[(arm, key)] = median
            text = ", ".join("-" if h is None else f"{h['time_s']:.0f}" for h in hits)
            steps = ", ".join("-" if h is None else f"{h['step']:g}" for h in hits)
            cells.append(f"{'-' if median is None else f'{median:.0f}'} ({text}) | {steps}")

        def med(key: str, rows: list[dict[str, Any]] = rows) -> str:
            values = [r[key] for r in rows if r.get(key) is not None]
            return f"{statistics.median(values):.2f}" if values else "-"

        lines.append(
            f"| {arm} | {len(rows)} | {' | '.join(cells)} | {med('step_s')} | {med('generation_s')} "
            f"| {med('training_s')} | {med('step_over_max')} | {med('final')} |"
        )
    for t in targets:
        key = f"{t:.2f}"
        trl = medians.get(("trl", key))
        for arm in DAPO_ARMS:
            mine = medians.get((arm, key))
            if mine is not None and trl:
                lines.append(f"\n{arm} / trl, time to {t:.0%} (medians): {mine / trl:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "examples/tiny-model"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", default="sync,async,trl")
    parser.add_argument("--steps", type=int, default=60, help="dapo steps (batches) per run")
    parser.add_argument("--val-period", type=int, default=5)
    parser.add_argument("--targets", default="0.89,0.95")
    parser.add_argument("--trl-budget-s", type=float, default=200.0)
    parser.add_argument(
        "--trl-eval-every-s",
        type=float,
        default=0.0,
        help="evaluate TRL every N s of training instead of on dapo's --val-period grid (0: the grid)",
    )
    parser.add_argument("--dapo-override", action="append", default=[], help="extra key=value for dapo arms")
    parser.add_argument("--out", default=str(ROOT / "results/overlap"))
    args = parser.parse_args()
    args.targets = [float(t) for t in args.targets.split(",")]
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - {*DAPO_ARMS, "trl"})
    if unknown:
        parser.error(f"--arms: unknown {unknown}; expected some of {[*DAPO_ARMS, 'trl']}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in arms:
            load_before = os.getloadavg()[0]
            result = run_trl(seed, args, out) if arm == "trl" else run_dapo(arm, seed, args, out)
            result["load_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "val"}), flush=True)
            (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
            print(summarise(results, args.targets), flush=True)
    exit_if_failed(results)


if __name__ == "__main__":
    main()

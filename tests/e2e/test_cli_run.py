"""`dapo run` and `examples/run_grpo_math.py` as a user runs them: the real command line on the shipped
tiny model and config (a few steps), checked by what they leave behind: the exit code, the outcome and
before/after summary lines they print, and the files (metrics.jsonl, TensorBoard events, run.png).

Redis, the reward service, the rollout server and the trainer are started once for the module and
shared (every command gets their addresses, as with `dapo up`); each command starts its own controller.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dapo.config import load_config
from dapo.healthcheck import check_grpc
from dapo.launch.launcher import Launcher

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples/configs/tiny_cpu.yaml"
NUM_STEPS = 2
NUM_VAL = 16
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_overrides(work: Path) -> list[str]:
    """The README's configuration, made small: two steps, 4 prompts x 4 samples, 16 held-out problems."""
    return [
        "policy.train_global_batch_size=16",
        "policy.train_micro_batch_size=16",
        "grpo.num_prompts_per_step=4",
        "grpo.num_generations_per_prompt=4",
        "grpo.use_dynamic_sampling=false",
        f"grpo.max_num_steps={NUM_STEPS}",
        f"grpo.val_period={NUM_STEPS}",
        f"data.max_val_samples={NUM_VAL}",
        "checkpointing.enabled=false",
        f"checkpointing.checkpoint_dir={work / 'ckpt'}",
        f"logger.log_dir={work / 'logs'}",
    ]


@dataclass
class Workers:
    redis_url: str
    overrides: list[str]  # the shared services' addresses
    service_token: str  # theirs: each run's controller must present it


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    work = tmp_path_factory.mktemp("cli-workers")
    config = load_config(CONFIG, run_overrides(work))
    launcher = Launcher(config, work, config.model_dump(mode="json"))
    try:
        launcher.start(with_controller=False)
        [rollout] = launcher.rollout_addresses
        # Up is enough: it serves once a run's trainer publishes (each run's controller waits for that).
        deadline = time.monotonic() + 180
        while check_grpc(rollout, "", timeout_s=1.0)[1].endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
            assert time.monotonic() < deadline, f"the rollout server {rollout} did not start"
            launcher.supervise()
            time.sleep(1.0)
        assert launcher.redis_url is not None
        yield Workers(
            launcher.redis_url,
            [
                f"services.reward_address={launcher.reward_address}",
                f"services.rollout_addresses=[{rollout}]",
                f"services.weights_address={launcher.weights_address}",
            ],
            launcher.service_token,
        )
    finally:
        launcher.stop()


def run_command(
    command: list[str], workers: Workers, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *workers.overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={
            **os.environ,
            "REDIS_URL": workers.redis_url,
            "DAPO_SERVICE_TOKEN": workers.service_token,
            "OMP_NUM_THREADS": "1",
            "COLUMNS": "200",
        },
    )


def dapo_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "dapo.cli", "run", str(CONFIG), *args]


def example_run(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "examples/run_grpo_math.py"), "--config", str(CONFIG), *args]


def check_succeeded_run(
    reply: subprocess.CompletedProcess[str], work: Path, num_steps: int = NUM_STEPS
) -> dict[int, float]:
    """Exit 0, the outcome and summary lines, and the three files, consistent with each other; returns
    the validation accuracy by step."""
    output = reply.stdout + reply.stderr
    assert reply.returncode == 0, output[-4000:]
    run_id = re.search(r"^run (\S+) submitted to ", reply.stdout, re.M)
    assert run_id is not None, output[-4000:]
    out = work / "logs" / run_id[1]
    assert re.search(rf"^run {run_id[1]} succeeded$", reply.stdout, re.M), reply.stdout
    assert f"metrics, TensorBoard events and plot in {out}" in reply.stdout

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), steps  # one record per step
    trained = [r for r in rows if "train/loss" in r]
    assert [r["version"] for r in trained] == list(range(1, num_steps + 1))
    # DAPO's reward is +1 right, -1 wrong: the mean reward follows from the accuracy (and can be below 0).
    for r in trained:
        assert -1.0 <= r["train/reward"] <= 1.0, r
        assert r["train/reward"] == pytest.approx(2 * r["train/accuracy"] - 1), r
    validated = {r["step"]: r["val/accuracy"] for r in rows if "val/accuracy" in r}
    assert sorted(validated) == [0, num_steps], validated
    first, last = validated[0], validated[num_steps]
    summary = (
        f"validation accuracy: {first:.1%} at step 0 -> {last:.1%} at step {num_steps} "
        f"({(last - first) * 100:+.1f} points)"
    )
    assert summary in reply.stdout.splitlines(), reply.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = list((out / "tensorboard").glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("train/loss")] == [r["step"] for r in trained]
    assert [e.value for e in accumulator.Scalars("val/accuracy")] == pytest.approx([first, last])

    png = (out / "run.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    assert matplotlib.image.imread(out / "run.png").shape[:2] == (700, 1300)  # the 13 x 7 in figure
    return dict(validated)


def test_dapo_run_succeeds_and_writes_its_outputs(workers: Workers, tmp_path: Path) -> None:
    check_succeeded_run(run_command(dapo_run(*run_overrides(tmp_path)), workers), tmp_path)


def test_run_grpo_math_example_succeeds_and_writes_its_outputs(workers: Workers, tmp_path: Path) -> None:
    check_succeeded_run(run_command(example_run(*run_overrides(tmp_path)), workers), tmp_path)


@pytest.mark.parametrize("command", [dapo_run, example_run], ids=["dapo-run", "example"])
def test_a_run_whose_data_is_bad_fails_with_the_reason(workers: Workers, tmp_path: Path, command) -> None:  # noqa: ANN001
    rows = tmp_path / "train.jsonl"
    good = {"prompt": [{"role": "user", "content": "What is 1+1?"}], "reward_model": {"ground_truth": "2"}}
    rows.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": good["prompt"]}) + "\n")
    reply = run_command(command(*run_overrides(tmp_path), f"data.train_file={rows}"), workers)
    assert reply.returncode == 1, (reply.stdout + reply.stderr)[-4000:]
    failed = re.search(r"^run (\S+) failed: (.*)$", reply.stdout, re.M)
    assert failed is not None, reply.stdout
    assert failed[2] == f"DataError: {rows}: row 1 lacks field 'reward_model'"
    assert "no validation ran" in reply.stdout.splitlines()
    out = tmp_path / "logs" / failed[1]
    assert (out / "run.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (out / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize("command", [dapo_run, example_run], ids=["dapo-run", "example"])
def test_a_config_error_exits_2_naming_the_key_before_any_service_starts(
    tmp_path: Path,
    command,  # noqa: ANN001
) -> None:
    reply = subprocess.run(
        command(f"logger.log_dir={tmp_path / 'logs'}", "grpo.ratio_clip_mx=0.3"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reply.returncode == 2, reply.stdout + reply.stderr
    assert reply.stderr.startswith("dapo run: ") and "ratio_clip_mx" in reply.stderr, reply.stderr
    assert not (tmp_path / "logs").exists()  # nothing started, nothing written


def test_the_example_rejects_an_argument_that_is_not_an_override(tmp_path: Path) -> None:
    reply = subprocess.run(example_run("--steps", "3"), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert reply.returncode == 2
    assert "expected key=value overrides, got --steps 3" in reply.stderr

"""The NeMo RL DAPO guide's single-node command, as a user types it here (`uv run` dropped, the tiny CPU
config given with --config): the model named by hub id comes from the local Hugging Face cache, the run
ends, and it leaves an offline W&B run with per-step metrics, TensorBoard events and a Hugging Face
checkpoint. Only the run's length, its data and where outputs go are shortened for the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hf_cache import fake_hub_cache
from tests.wandb_offline import read_offline_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny-model"
NUM_STEPS = 3


def test_seed_single_node_command_runs_and_logs_to_wandb(tmp_path: Path) -> None:
    fake_hub_cache(tmp_path / "hf", "Qwen/Qwen2.5-1.5B", TINY)
    command = [
        sys.executable,
        "examples/run_grpo_math.py",
        "--config",
        "examples/configs/tiny_cpu.yaml",
        # the guide's overrides
        "policy.model_name=Qwen/Qwen2.5-1.5B",
        "loss_fn.ratio_clip_min=0.2",
        "loss_fn.ratio_clip_max=0.28",
        "grpo.use_dynamic_sampling=True",
        "logger.wandb_enabled=True",
        "logger.wandb.project=dapo-e2e",
        "logger.wandb.name=dapo-qwen2.5-1.5b",
        # shortened for the test
        f"grpo.max_num_steps={NUM_STEPS}",
        "grpo.val_period=0",
        "grpo.val_at_start=False",
        "data.max_val_samples=20",
        f"checkpointing.checkpoint_dir={tmp_path / 'ckpt'}",
        f"checkpointing.save_period={NUM_STEPS}",
        f"logger.log_dir={tmp_path / 'logs'}",
    ]
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    (run_dir,) = [p for p in (tmp_path / "logs").iterdir() if not p.name.startswith("launch-")]
    (wandb_dir,) = (run_dir / "wandb").glob("offline-run-*")
    rows, config = read_offline_run(wandb_dir)
    trained = {row["_step"]: row for row in rows if "train/loss" in row}
    assert sorted(trained) == list(range(NUM_STEPS))
    assert all("train/reward" in row and "train/clip_high_frac" in row for row in trained.values())
    assert any("val/accuracy" in row for row in rows)  # the final validation
    assert config["policy"]["model_name"] == "Qwen/Qwen2.5-1.5B"
    assert config["loss_fn"]["ratio_clip_min"] == 0.2

    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    (checkpoint,) = (tmp_path / "ckpt").glob(f"*/step_{NUM_STEPS}")
    hf = checkpoint / "hf"
    assert (hf / "config.json").is_file() and list(hf.glob("*.safetensors"))
    assert (hf / "tokenizer.json").is_file() or (hf / "tokenizer_config.json").is_file()

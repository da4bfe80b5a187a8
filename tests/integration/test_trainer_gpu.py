"""The trainer on a CUDA GPU: NCCL process group, bfloat16 forward/backward with float32 master weights.

The ranks' own report (tests/integration/trainer_probe.py) is checked for each of those claims, and
for CUDA memory having been used; tests/integration/test_trainer_probe.py shows on CPU that the same
check names a gloo/CPU fallback. Then the trainer service trains two batches and exports.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dapo_trainer.synthetic import make_batch

from dapo import keys
from dapo.local_redis import free_port
from tests.integration.trainer_probe import gpu_run_problems, run_probe

pytestmark = pytest.mark.gpu


def test_the_ranks_use_nccl_bfloat16_compute_float32_masters_and_cuda(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    import torch

    num_ranks = min(2, torch.cuda.device_count())
    ranks = run_probe(tiny_model_dir, tmp_path / "probe", "bfloat16", num_ranks)
    assert gpu_run_problems(ranks, "bfloat16", num_ranks) == []


def test_bfloat16_run_on_gpu_trains_and_exports(
    tmp_path: Path, redis_server, redis_client, tiny_model_dir
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_id = "gpu"
    config = {
        "policy": {
            "model_name": str(tiny_model_dir),
            "train_global_batch_size": 4,
            "train_micro_batch_size": 2,
            "precision": "bfloat16",
            "max_total_sequence_length": 64,
            "generation": {"max_new_tokens": 32},
            "optimizer": {"lr": 1e-3},
        },
        "grpo": {"num_prompts_per_step": 2, "num_generations_per_prompt": 4, "max_num_steps": 2},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "checkpoints"), "save_period": 2},
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    loss_tokens: dict[int, float] = {}
    for step in range(2):
        batch = make_batch(run_id, step, num_sequences=8, vocab_size=512)
        loss_tokens[step] = float(sum(int(m.sum()) for m in batch.loss_mask))
        redis_client.xadd(keys.batch_stream(run_id), batch.to_fields())
    log = tmp_path / "trainer.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", f"--master_port={free_port()}",
                "-m", "dapo.cli", "trainer", "--redis-url", redis_server.url, "--run-id", run_id,
                "--config", str(config_path), "--publisher-port", str(free_port()), "--exit-when-done",
            ],
            stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        try:
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, log.read_text()[-4000:]
    records = [json.loads(f[b"data"]) for _, f in redis_client.xrange(keys.metrics_stream(run_id))]
    assert [r["version"] for r in records] == [1, 2]
    for record in records:
        assert math.isfinite(record["train/loss"]), record
        assert math.isfinite(record["train/grad_norm"]) and record["train/grad_norm"] > 0, record
        assert record["train/num_optimizer_steps"] == 2.0  # 8 sequences, global batch 4
        assert record["train/num_loss_tokens"] == loss_tokens[record["step"]], record
        assert record["train/tokens_per_s"] > 0, record
    export = tmp_path / "checkpoints" / run_id / "step_2" / "hf"
    trained = load_file(export / "model.safetensors")
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in trained.values())  # the model directory's dtype
    assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 1e-4
    AutoModelForCausalLM.from_pretrained(export)

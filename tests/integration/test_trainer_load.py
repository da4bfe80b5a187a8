"""The trainer's model load on two gloo ranks: rank 0 reads the weights, every other rank builds the model
on the meta device and receives its shards; the result is bitwise the old load's (every rank reading the
whole model, then sharding it): the same shards, buffers and log-probs on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dapo.local_redis import free_port

pytestmark = pytest.mark.slow


def test_rank0_load_gives_every_rank_the_shards_of_a_full_load(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "load"
    script = Path(__file__).with_name("load_check.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(script),
        str(tiny_model_dir),
        str(out),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for facts in ranks:
        assert facts["keys_equal"], facts
        assert facts["shards_unequal"] == [] and facts["buffers_unequal"] == [], facts
        assert facts["meta"] == [], facts  # nothing left unmaterialised
        assert facts["logprobs_equal"], facts
        assert facts["num_local_elements"] < facts["num_elements"]  # a shard each, not a copy
    assert sum(f["num_local_elements"] for f in ranks) == ranks[0]["num_elements"]
    assert ranks[0]["logprob_mean"] == ranks[1]["logprob_mean"]

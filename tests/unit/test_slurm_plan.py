"""`dapo slurm-plan`: cluster.num_nodes and cluster.gpus_per_node decide where each service of a Slurm job
goes (the plan deploy/slurm/dapo.sub runs; tests/e2e/test_slurm.py runs it on a real cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dapo.config import ConfigError, ConfigWarning, load_config
from dapo.launch.services import check_layout
from dapo.launch.slurm import Node, format_plan, layout, plan

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = ROOT / "examples/tiny-model"
NODES = [Node("gpu-a", "10.0.0.1"), Node("gpu-b", "10.0.0.2"), Node("gpu-c", "10.0.0.3")]


def steps_of(overrides: list[str], nodes: int) -> dict[str, tuple[list[str], str]]:
    config = load_config(None, [f"policy.model_name={TINY_MODEL}", *overrides])
    _, steps = plan(config, NODES[:nodes], Path("/jobs/7"), 18000, "python")
    return {s.name: ([n.name for n in s.nodes], s.command) for s in steps}


def settings_of(overrides: list[str], nodes: int, step: str, node: str, job_dir: Path) -> dict[str, Any]:
    """What step `step`'s task on `node` writes and starts its service with: its command run by a real
    shell, with `echo` in place of Python, and the settings file it names read back."""
    config = load_config(None, [f"policy.model_name={TINY_MODEL}", *overrides])
    _, steps = plan(config, NODES[:nodes], job_dir, 18000, "echo")
    [command] = [s.command for s in steps if s.name == step]
    env = {"PATH": os.environ["PATH"], "SLURMD_NODENAME": node, "SLURM_NODEID": "0"}
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, check=True).stdout
    argv = out.split()
    assert argv[-2] == "--settings", out
    path = Path(argv[-1])
    assert path.parent == job_dir / "settings" and path.name == f"{step}-{node}.settings.json"
    assert path.stat().st_mode & 0o077 == 0  # owner only
    return dict(json.loads(path.read_text()))


def test_two_gpu_nodes_share_each_node_between_trainer_ranks_and_rollout_servers(tmp_path: Path) -> None:
    config = load_config(
        None, ["cluster.num_nodes=2", "cluster.gpus_per_node=8", "cluster.num_rollout_servers=2"]
    )
    lay = layout(config)
    assert lay.trainer_nodes == [0, 1] and lay.trainer_gpus == ["4", "5", "6", "7"] and lay.trainer_nproc == 4
    assert lay.rollout_nodes == [0, 1] and lay.rollout_gpus == [["0", "1", "2", "3"], ["0", "1", "2", "3"]]
    steps = steps_of(["cluster.num_nodes=2", "cluster.gpus_per_node=8", "cluster.num_rollout_servers=2"], 2)
    nodes, trainer = steps["trainer"]
    assert nodes == ["gpu-a", "gpu-b"]
    assert (
        "export CUDA_VISIBLE_DEVICES=4,5,6,7; exec python -m torch.distributed.run --nnodes=2 --nproc_per_node=4"
        in trainer
    )
    assert (
        '--master_addr=10.0.0.1 --master_port=18006 --node_rank="$SLURM_NODEID" -m dapo.cli trainer'
        in trainer
    )
    overrides = ["cluster.num_nodes=2", "cluster.gpus_per_node=8", "cluster.num_rollout_servers=2"]
    assert trainer.endswith(
        '-m dapo.cli trainer --settings /jobs/7/settings/trainer-"$SLURMD_NODENAME".settings.json'
    )
    trainer_settings = settings_of(overrides, 2, "trainer", "gpu-b", tmp_path)
    assert (trainer_settings["publisher_host"], trainer_settings["publisher_port"]) == ("10.0.0.1", 18004)
    assert "redis_url" not in trainer_settings  # a secret: $REDIS_URL in the task's environment
    assert steps["rollout-1"][0] == ["gpu-b"]
    assert (
        "export CUDA_VISIBLE_DEVICES=0,1,2,3; exec python -m dapo.cli rollout --settings"
        in steps["rollout-1"][1]
    )
    rollout = settings_of(overrides, 2, "rollout-1", "gpu-b", tmp_path)
    assert (rollout["host"], rollout["port"], rollout["metrics_port"]) == ("10.0.0.2", 18012, 18013)
    assert (rollout["weights_address"], rollout["seed"], rollout["model"]) == (
        "10.0.0.1:18004",
        43,
        str(TINY_MODEL),
    )
    for name in ("redis", "reward", "controller"):
        assert steps[name][0] == ["gpu-a"], name
    controller = settings_of(overrides, 2, "controller", "gpu-a", tmp_path)
    assert controller["rollout_addresses"] == ["10.0.0.1:18010", "10.0.0.2:18012"]
    assert controller["reward_address"] == "10.0.0.1:18002"
    reward = settings_of(
        [*overrides, "env.math.timeout=7", "env.math.math_verify.float_rounding=3"],
        2,
        "reward",
        "gpu-a",
        tmp_path,
    )
    assert (reward["grpc_port"], reward["http_port"], reward["timeout"]) == (18002, 18003, 7)
    assert reward["math_verify"]["float_rounding"] == 3  # grading options reach the reward service too
    # Whatever the settings hold (quotes included), the step's command stays one shell line the shell reads back.
    quoted = settings_of(
        [*overrides, 'policy.hf_config_overrides={name: "it\'s \\\\n $HOME"}'],
        2,
        "rollout-0",
        "gpu-a",
        tmp_path,
    )
    assert quoted["hf_overrides"] == {"name": "it's \\n $HOME"}


def test_rollout_nodes_take_the_last_nodes_whole() -> None:
    settings = ["cluster.num_nodes=3", "cluster.gpus_per_node=8", "cluster.rollout_nodes=1",
                "cluster.num_rollout_servers=2", "policy.generation.vllm_cfg.tensor_parallel_size=4"]  # fmt: skip
    lay = layout(load_config(None, settings))
    assert (
        lay.trainer_nodes == [0, 1]
        and lay.trainer_nproc == 8
        and lay.trainer_gpus == [str(i) for i in range(8)]
    )
    assert lay.rollout_nodes == [2, 2] and lay.rollout_gpus == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    steps = steps_of(settings, 3)
    assert (
        steps["trainer"][0] == ["gpu-a", "gpu-b"] and "--nnodes=2 --nproc_per_node=8" in steps["trainer"][1]
    )
    assert steps["rollout-0"][0] == steps["rollout-1"][0] == ["gpu-c"]


def test_nemo_non_colocated_generation_gets_nodes_or_gpus_of_its_own() -> None:
    off = "policy.generation.colocated.enabled=false"
    nodes = load_config(
        None, [off, "policy.generation.colocated.resources.num_nodes=1", "cluster.num_nodes=3"]
    )
    assert nodes.cluster.rollout_nodes == 1 and layout(nodes).trainer_nodes == [0, 1]
    gpus = load_config(
        None, [off, "policy.generation.colocated.resources.gpus_per_node=2", "cluster.gpus_per_node=8"]
    )
    assert gpus.cluster.rollout_gpus == 2 and gpus.cluster.rollout_nodes == 0
    with pytest.warns(ConfigWarning, match=r"policy\.generation\.colocated"):  # time-sharing: ignored
        shared = load_config(None, ["policy.generation.colocated.enabled=true", "cluster.num_nodes=2"])
    assert shared.cluster.rollout_nodes == 0 and layout(shared).trainer_nodes == [0, 1]


def test_cpu_nodes_get_one_rank_each_and_the_servers_in_turn() -> None:
    lay = layout(load_config(None, ["cluster.num_nodes=2"]))
    assert lay.trainer_nodes == [0, 1] and lay.trainer_nproc == 1 and lay.trainer_gpus == []
    assert lay.rollout_nodes == [0] and lay.rollout_gpus == [[]]
    steps = steps_of(["cluster.num_nodes=2"], 2)
    assert (
        'export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"; exec nice -n 10 python -m dapo.cli rollout '
        in steps["rollout-0"][1]
    )


def test_secrets_stay_out_of_the_plan() -> None:
    steps = steps_of([], 1)
    redis = steps["redis"][1]
    assert "printf 'requirepass %s\\n' \"$DAPO_REDIS_PASSWORD\" | exec " in redis
    assert "--bind 10.0.0.1 --port 18000 --dir /jobs/7/redis --appendonly yes" in redis
    text = format_plan({"REDIS_ADDRESS": "10.0.0.1:18000"}, [])
    assert text == "var\tREDIS_ADDRESS\t10.0.0.1:18000\n"


@pytest.mark.parametrize(
    ("overrides", "nodes", "message"),
    [
        (
            ["cluster.num_nodes=2"],
            1,
            "the job has 1 node(s) but cluster.num_nodes is 2: submit it with sbatch --nodes=2",
        ),
        (
            ["cluster.num_nodes=2", "cluster.rollout_nodes=2"],
            2,
            "cluster.rollout_nodes (2) must leave the trainer",
        ),
        (
            ["cluster.num_nodes=2", "cluster.gpus_per_node=8", "cluster.num_rollout_servers=3"],
            2,
            "cluster.num_rollout_servers (3) must be a multiple of the 2 node(s)",
        ),
        (
            [
                "cluster.num_nodes=2",
                "cluster.gpus_per_node=4",
                "cluster.rollout_nodes=1",
                "cluster.num_rollout_servers=2",
                "policy.generation.vllm_cfg.tensor_parallel_size=4",
            ],  # fmt: skip
            2,
            "tensor_parallel_size (4) is more than the 2 GPU(s)",
        ),
    ],
)
def test_a_layout_that_does_not_fit_is_refused_naming_the_key(
    overrides: list[str], nodes: int, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        steps_of(overrides, nodes)
    assert message in str(raised.value)


def test_dapo_run_refuses_several_nodes_pointing_to_slurm_and_helm() -> None:
    with pytest.raises(ConfigError) as raised:
        check_layout(load_config(None, ["cluster.num_nodes=2"]))
    assert "sbatch --nodes=2 deploy/slurm/dapo.sub" in str(raised.value) and "helm/dapo" in str(raised.value)


def test_the_command_prints_the_plan_or_exits_2_with_the_reason(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "dapo.cli", "slurm-plan", "examples/configs/tiny_cpu.yaml"]
    nodes = ["--node", "n1=127.0.0.1", "--node", "n2=127.0.0.1", "--job-dir", str(tmp_path)]
    reply = subprocess.run([*base, "cluster.num_nodes=2", *nodes], cwd=ROOT, capture_output=True, text=True)
    assert reply.returncode == 0, reply.stderr
    rows = [line.split("\t") for line in reply.stdout.splitlines()]
    assert [r[1] for r in rows if r[0] == "step"] == ["redis", "reward", "trainer", "rollout-0", "controller"]
    assert ["var", "CONTROLLER_URL", "http://127.0.0.1:18001"] in rows
    assert all(len(r) == (3 if r[0] == "var" else 4) for r in rows), rows
    reply = subprocess.run([*base, "cluster.num_nodes=3", *nodes], cwd=ROOT, capture_output=True, text=True)
    assert reply.returncode == 2 and "cluster.num_nodes is 3" in reply.stderr, reply.stderr

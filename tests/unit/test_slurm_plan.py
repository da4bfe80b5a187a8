"""`dapo slurm-plan`: cluster.num_nodes and cluster.gpus_per_node decide where each service of a Slurm job
goes (the plan deploy/slurm/dapo.sub runs; tests/e2e/test_slurm.py runs it on a real cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dapo_controller.launcher import check_layout
from dapo_controller.slurm import Node, format_plan, layout, plan

from dapo.config import ConfigError, ConfigWarning, load_config

ROOT = Path(__file__).resolve().parents[2]
NODES = [Node("gpu-a", "10.0.0.1"), Node("gpu-b", "10.0.0.2"), Node("gpu-c", "10.0.0.3")]


def steps_of(overrides: list[str], nodes: int) -> dict[str, tuple[list[str], str]]:
    config = load_config(None, ["policy.model_name=/models/m", *overrides])
    _, steps = plan(config, NODES[:nodes], Path("/jobs/7"), 18000, "python")
    return {s.name: ([n.name for n in s.nodes], s.command) for s in steps}


def test_two_gpu_nodes_share_each_node_between_trainer_ranks_and_rollout_servers() -> None:
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
    assert "--publisher-host 10.0.0.1 --publisher-port 18004" in trainer
    assert steps["rollout-1"][0] == ["gpu-b"]
    assert (
        "export CUDA_VISIBLE_DEVICES=0,1,2,3; exec python -m dapo.cli rollout --host 10.0.0.2 --port 18012"
        in steps["rollout-1"][1]
    )
    assert "--weights-address 10.0.0.1:18004 --seed 43" in steps["rollout-1"][1]
    for name in ("redis", "reward", "controller"):
        assert steps[name][0] == ["gpu-a"], name
    assert (
        "--rollout-addresses 10.0.0.1:18010,10.0.0.2:18012 --reward-address 10.0.0.1:18002"
        in steps["controller"][1]
    )


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
    assert steps["rollout-0"][1].startswith(
        'export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"; exec nice -n 10 '
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

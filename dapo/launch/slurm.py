"""`dapo slurm-plan`: where each service of a run goes in a Slurm job; deploy/slurm/dapo.sub runs the plan.

`cluster.num_nodes` and `cluster.gpus_per_node` decide the layout over the job's nodes (in the order
`scontrol show hostnames` lists them):

- node 0 runs Redis, the controller and the reward service;
- the trainer is ONE torchrun group over the trainer nodes (every node but the last `cluster.rollout_nodes`),
  `cluster.trainer_processes_per_node` ranks on each (default: the node's trainer GPUs, or 1 on CPU);
- the `cluster.num_rollout_servers` rollout servers go to the rollout nodes in turn (the last
  `cluster.rollout_nodes`, or every node when it is 0). A node that runs both gives its first
  `cluster.rollout_gpus` GPUs (default half) to its rollout servers and the rest to its trainer ranks, as
  `dapo run` does on one node; a node given to one side gives it all its GPUs.

Services listen on their node's address (from `scontrol show node`, since node names need not resolve),
on ports counted from `--port-base`, each service its own (simulated nodes of one host share them).

The plan is printed as tab-separated lines, read by the batch script:
    var  NAME  VALUE                               (REDIS_ADDRESS, CONTROLLER_URL, WEIGHTS_ADDRESS)
    step NAME  NODE[,NODE...]  SHELL-COMMAND        (one srun task on each node; its log is NAME.log,
                                                    or NAME-<node>.log for a step over several nodes)
The commands refer to $DAPO_REDIS_PASSWORD, $SLURM_NODEID, ... which the task's shell expands, so no
secret is ever part of the plan or of a command line.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from dapo import auth
from dapo.config import ConfigError, RunConfig, load_config
from dapo.launch.services import (
    ROLLOUT_CPU_NICE,
    check_model,
    check_wandb,
    controller_settings,
    gpu_split,
    reward_settings,
    rollout_settings,
    trainer_settings,
)
from dapo.local_redis import redis_server_binary
from dapo.service_settings import ServiceSettings

# Port offsets from --port-base, one per service (rollout server i: ROLLOUT + 2i and ROLLOUT + 2i + 1).
REDIS, CONTROLLER, REWARD_GRPC, REWARD_HTTP, WEIGHTS, TRAINER_METRICS, TORCHRUN = range(7)
ROLLOUT = 10


@dataclass(frozen=True)
class Node:
    name: str
    address: str


@dataclass(frozen=True)
class Step:
    name: str
    nodes: tuple[Node, ...]
    command: str


@dataclass(frozen=True)
class Layout:
    """Node indices of each part, and the CUDA devices each part gets on its nodes."""

    trainer_nodes: list[int]
    trainer_gpus: list[str]
    trainer_nproc: int
    rollout_nodes: list[int]  # of server i
    rollout_gpus: list[list[str]]  # of server i


def layout(config: RunConfig) -> Layout:
    """The layout of `config` over cluster.num_nodes nodes (ConfigError naming the key that does not fit)."""
    c = config.cluster
    nodes, dedicated = c.num_nodes, c.rollout_nodes
    if dedicated >= nodes:
        raise ConfigError(
            f"cluster.rollout_nodes ({dedicated}) must leave the trainer at least one of cluster.num_nodes ({nodes})"
        )
    trainer_nodes = list(range(nodes - dedicated))
    rollout_nodes = list(range(nodes - dedicated, nodes)) if dedicated else list(range(nodes))
    servers = c.num_rollout_servers
    if c.gpus_per_node and servers % len(rollout_nodes):
        raise ConfigError(
            f"cluster.num_rollout_servers ({servers}) must be a multiple of the {len(rollout_nodes)} node(s) "
            "that run rollout servers, so that every node splits its GPUs alike"
        )
    per_node = -(-servers // len(rollout_nodes))
    if not dedicated:
        # Every node is split as `dapo run` splits one node.
        node_rollout, trainer_gpus = gpu_split(
            config.model_copy(update={"cluster": c.model_copy(update={"num_rollout_servers": per_node})})
        )
    else:
        ids = [str(i) for i in range(c.gpus_per_node)]
        trainer_gpus = ids
        share = len(ids) // per_node
        tensor_parallel = config.policy.generation.vllm_cfg.tensor_parallel_size
        if ids and share < tensor_parallel:
            raise ConfigError(
                f"policy.generation.vllm_cfg.tensor_parallel_size ({tensor_parallel}) is more than the {share} "
                f"GPU(s) each of the {per_node} rollout server(s) of a node gets of cluster.gpus_per_node ({len(ids)})"
            )
        node_rollout = [ids[j * share : (j + 1) * share] for j in range(per_node)]
    return Layout(
        trainer_nodes=trainer_nodes,
        trainer_gpus=trainer_gpus,
        trainer_nproc=c.trainer_processes_per_node or max(1, len(trainer_gpus)),
        rollout_nodes=[rollout_nodes[i % len(rollout_nodes)] for i in range(servers)],
        rollout_gpus=[node_rollout[i // len(rollout_nodes)] for i in range(servers)],
    )


@dataclass(frozen=True)
class _Job:
    """What every step's command is built from."""

    config: RunConfig
    nodes: list[Node]
    lay: Layout
    job_dir: Path
    port_base: int
    python: str

    @property
    def py(self) -> list[str]:
        return [self.python, "-m", "dapo.cli"]

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def trainer_head(self) -> Node:
        return self.nodes[self.lay.trainer_nodes[0]]

    @property
    def weights(self) -> str:
        return f"{self.trainer_head.address}:{self.port_base + WEIGHTS}"

    @property
    def redis_url(self) -> str:
        """Without the password, which reaches each task as $REDIS_URL (a secret field: never written)."""
        return f"redis://{self.head.address}:{self.port_base + REDIS}/0"

    def with_settings(self, name: str, settings: ServiceSettings) -> tuple[str, str]:
        """(shell that writes `settings` on the task's node, the `--settings FILE` flag to start with).

        Each node writes its own file (`NAME-<node>.settings.json` under the job directory), so a
        directory the nodes do not share works, and the tasks of one step never write one file.
        """
        folder = shlex.quote(str(self.job_dir / "settings"))
        path = f'{folder}/{name}-"$SLURMD_NODENAME".settings.json'
        data = settings.model_dump_json(exclude=set(settings.secret_fields))
        write = f"mkdir -p {folder} && (umask 077 && printf '%s\\n' {shlex.quote(data)} > {path}) || exit 1; "
        return write, f"--settings {path}"


def plan(
    config: RunConfig, nodes: list[Node], job_dir: Path, port_base: int, python: str
) -> tuple[dict[str, str], list[Step]]:
    """The variables and steps of a job over `nodes` (ConfigError when they do not fit the config)."""
    if len(nodes) != config.cluster.num_nodes:
        raise ConfigError(
            f"the job has {len(nodes)} node(s) but cluster.num_nodes is {config.cluster.num_nodes}: "
            f"submit it with sbatch --nodes={config.cluster.num_nodes} (or set cluster.num_nodes={len(nodes)})"
        )
    job = _Job(config, nodes, layout(config), job_dir, port_base, python)
    head = job.head
    scheme = "https" if auth.tls_files() is not None else "http"
    variables = {
        "REDIS_ADDRESS": f"{head.address}:{port_base + REDIS}",
        "CONTROLLER_URL": f"{scheme}://{head.address}:{port_base + CONTROLLER}",
        "WEIGHTS_ADDRESS": job.weights,
    }
    steps = [
        _redis_step(job),
        _reward_step(job),
        _trainer_step(job),
        *[_rollout_step(job, i) for i in range(len(job.lay.rollout_nodes))],
        _controller_step(job),
    ]
    return variables, steps


def _redis_step(job: _Job) -> Step:
    redis_dir = job.job_dir / "redis"
    redis = [
        redis_server_binary(), "-", "--bind", job.head.address, "--port", str(job.port_base + REDIS),
        "--dir", str(redis_dir), "--appendonly", "yes", "--save", "", "--daemonize", "no",
    ]  # fmt: skip
    # The password reaches redis-server as its configuration on stdin, not on its command line.
    return Step(
        "redis",
        (job.head,),
        f"mkdir -p {shlex.quote(str(redis_dir))} && "
        f"printf 'requirepass %s\\n' \"$DAPO_REDIS_PASSWORD\" | exec {shlex.join(redis)}",
    )


def _service_step(
    job: _Job,
    name: str,
    command: str,
    settings: ServiceSettings,
    node: Node,
    *,
    env: str = "",
    runner: tuple[str, ...] = (),
) -> Step:
    """`[RUNNER] dapo COMMAND --settings FILE` on `node`, the file written there first, after the `env` exports."""
    write, flag = job.with_settings(name, settings)
    return Step(name, (node,), f"{write}{env}exec {shlex.join([*runner, *job.py, command])} {flag}")


def _reward_step(job: _Job) -> Step:
    head, port_base = job.head, job.port_base
    settings = reward_settings(job.config, head.address, port_base + REWARD_GRPC, port_base + REWARD_HTTP)
    return _service_step(job, "reward", "reward", settings, head)


def _trainer_step(job: _Job) -> Step:
    """One torchrun group over the trainer nodes."""
    lay, port_base, trainer_head = job.lay, job.port_base, job.trainer_head
    nnodes = len(lay.trainer_nodes)
    torchrun = [
        job.python, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc_per_node={lay.trainer_nproc}",
        f"--master_addr={trainer_head.address}", f"--master_port={port_base + TORCHRUN}",
    ]  # fmt: skip
    settings = trainer_settings(
        job.config, job.redis_url, trainer_head.address, port_base + WEIGHTS, port_base + TRAINER_METRICS
    )
    write, flag = job.with_settings("trainer", settings)
    # The node rank is the task's index in the step ($SLURM_NODEID), which its shell expands.
    trainer_cmd = f'{shlex.join(torchrun)} --node_rank="$SLURM_NODEID" -m dapo.cli trainer {flag}'
    devices = f"export CUDA_VISIBLE_DEVICES={','.join(lay.trainer_gpus)}; " if lay.trainer_gpus else ""
    return Step(
        "trainer",
        tuple(job.nodes[n] for n in lay.trainer_nodes),
        f'echo "trainer: node rank $SLURM_NODEID of {nnodes} on $SLURMD_NODENAME, '
        f'{lay.trainer_nproc} rank(s) per node, world size {nnodes * lay.trainer_nproc}"; '
        f"{write}{devices}exec {trainer_cmd}",
    )


def _rollout_port(job: _Job, server: int) -> int:
    return job.port_base + ROLLOUT + 2 * server


def _rollout_step(job: _Job, server: int) -> Step:
    node = job.nodes[job.lay.rollout_nodes[server]]
    gpus = job.lay.rollout_gpus[server]
    # On CPU at a lower priority, as `dapo run` does (see dapo.launch.services).
    env = 'export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"; '
    runner: tuple[str, ...] = ()
    if gpus:
        env += f"export CUDA_VISIBLE_DEVICES={','.join(gpus)}; "
    else:
        runner = ("nice", "-n", str(ROLLOUT_CPU_NICE))
    port = _rollout_port(job, server)
    settings = rollout_settings(job.config, server, node.address, port, port + 1, job.weights)
    return _service_step(job, f"rollout-{server}", "rollout", settings, node, env=env, runner=runner)


def _controller_step(job: _Job) -> Step:
    head, port_base = job.head, job.port_base
    rollout_addresses = [
        f"{job.nodes[n].address}:{_rollout_port(job, i)}" for i, n in enumerate(job.lay.rollout_nodes)
    ]
    reward = f"{head.address}:{port_base + REWARD_GRPC}"
    settings = controller_settings(
        job.config, job.redis_url, head.address, port_base + CONTROLLER, rollout_addresses, reward
    )
    return _service_step(job, "controller", "controller", settings, head)


def format_plan(variables: dict[str, str], steps: list[Step]) -> str:
    lines = [f"var\t{k}\t{v}" for k, v in variables.items()]
    for step in steps:
        if any(c in step.command for c in "\t\n"):
            raise ValueError(f"the command of step {step.name} holds a tab or newline")
        lines.append(f"step\t{step.name}\t{','.join(n.name for n in step.nodes)}\t{step.command}")
    return "\n".join(lines) + "\n"


def parse_node(text: str) -> Node:
    name, sep, address = text.partition("=")
    if not sep or not name or not address:
        raise ValueError(f"expected NAME=ADDRESS, got {text!r}")
    return Node(name, address)


def print_plan(
    config_path: str, overrides: list[str], nodes: list[Node], job_dir: Path, port_base: int, python: str
) -> int:
    """Print the plan of `config_path` over `nodes`; exit status 2 (and the problem) on a bad config."""
    try:
        config = load_config(config_path, overrides)
        check_model(config)
        check_wandb(config)
        variables, steps = plan(config, nodes, job_dir.resolve(), port_base, python)
    except ConfigError as exc:
        print(f"dapo slurm-plan: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(format_plan(variables, steps))
    return 0

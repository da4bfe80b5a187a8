"""What each service of a run gets from the run config: its settings model (`reward_settings`,
`rollout_settings`, `trainer_settings`, `controller_settings`), its GPUs (`gpu_split`), and the checks
made before any service starts. `dapo run` writes the settings to a file per service; the Slurm plan
writes the same settings on each node.

On CPU the rollout servers run at a lower scheduling priority (nice ROLLOUT_CPU_NICE): vLLM's worker and
engine processes poll their shared-memory queues in a sched_yield loop for a second after every engine
step, which on a small machine took almost half of the trainer's core while the trainer worked and the
rollout server had nothing to do (bench/RESULTS.md, "End to end"). A lower priority leaves the polling
only the cycles nobody else wants; generation itself runs while the trainer waits (synchronous runs).
"""

from __future__ import annotations

from dapo_controller.settings import ControllerSettings
from dapo_reward.settings import RewardSettings
from dapo_rollout.settings import RolloutSettings
from dapo_trainer.settings import TrainerSettings

from dapo.config import ConfigError, RunConfig
from dapo.hub import NotInCacheError, resolve_model_dir

ROLLOUT_CPU_NICE = 10


def gpu_split(config: RunConfig) -> tuple[list[list[str]], list[str]]:
    """CUDA devices for each rollout server and for the trainer on this node ([] on CPU)."""
    gpus = config.cluster.gpus_per_node
    servers = config.cluster.num_rollout_servers
    if gpus == 0:
        return [[] for _ in range(servers)], []
    rollout_gpus = (
        config.cluster.rollout_gpus if config.cluster.rollout_gpus is not None else max(1, gpus // 2)
    )
    if rollout_gpus < servers or rollout_gpus >= gpus:
        raise ConfigError(
            f"cluster.rollout_gpus ({rollout_gpus}) must be at least cluster.num_rollout_servers ({servers}) "
            f"and leave the trainer at least one of cluster.gpus_per_node ({gpus})"
        )
    per_server = rollout_gpus // servers
    tensor_parallel = config.policy.generation.vllm_cfg.tensor_parallel_size
    if per_server < tensor_parallel:
        raise ConfigError(
            f"policy.generation.vllm_cfg.tensor_parallel_size ({tensor_parallel}) is more than the {per_server} "
            f"GPU(s) each of cluster.num_rollout_servers ({servers}) gets of cluster.rollout_gpus ({rollout_gpus})"
        )
    ids = [str(i) for i in range(gpus)]
    return [ids[i * per_server : (i + 1) * per_server] for i in range(servers)], ids[rollout_gpus:]


def reward_settings(config: RunConfig, host: str, grpc_port: int, http_port: int) -> RewardSettings:
    """The reward service's settings for `config` (its env.math section)."""
    return RewardSettings.from_math(config.env.math, host=host, grpc_port=grpc_port, http_port=http_port)


def rollout_settings(
    config: RunConfig, index: int, host: str, port: int, metrics_port: int, weights_address: str
) -> RolloutSettings:
    """Rollout server `index` of the run (its sampling seed is grpo.seed + index); the engine from
    policy.generation.vllm_cfg."""
    vllm = config.policy.generation.vllm_cfg
    return RolloutSettings(
        model=config.policy.model_name,
        host=host,
        port=port,
        metrics_port=metrics_port,
        weights_address=weights_address,
        seed=config.grpo.seed + index,
        max_model_len=vllm.max_model_len or config.policy.max_total_sequence_length,
        gpu_memory_utilization=vllm.gpu_memory_utilization,
        tensor_parallel_size=vllm.tensor_parallel_size,
        dtype=vllm.precision,
        enforce_eager=vllm.enforce_eager,
        hf_overrides=config.policy.hf_config_overrides,
    )


def trainer_settings(
    config: RunConfig, redis_url: str, publisher_host: str, publisher_port: int, metrics_port: int
) -> TrainerSettings:
    """One trainer rank's settings (under torchrun every rank gets the same)."""
    return TrainerSettings(
        redis_url=redis_url,
        publisher_host=publisher_host,
        publisher_port=publisher_port,
        metrics_port=metrics_port,
        redis_retry_s=config.services.redis_timeout_s,
    )


def controller_settings(
    config: RunConfig, redis_url: str, host: str, port: int, rollout_addresses: list[str], reward_address: str
) -> ControllerSettings:
    """The controller's settings, driving these rollout servers and this reward service."""
    return ControllerSettings(
        redis_url=redis_url,
        host=host,
        port=port,
        rollout_addresses=rollout_addresses,
        reward_address=reward_address,
        redis_retry_s=config.services.redis_timeout_s,
    )


def check_wandb(config: RunConfig) -> None:
    """W&B is an optional extra: say how to get it before anything starts."""
    if not config.logger.wandb_enabled:
        return
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "logger.wandb_enabled is true but wandb is not installed: pip install 'dapo[wandb]' "
            "(scripts/install.sh installs it), or set logger.wandb_enabled=false"
        )


def check_model(config: RunConfig) -> None:
    """The model (and tokenizer) must be on disk or in the local HF cache before any service starts."""
    try:
        resolve_model_dir(config.policy.model_name)
        if config.policy.tokenizer.name:
            resolve_model_dir(config.policy.tokenizer.name, "policy.tokenizer.name")
    except NotInCacheError as exc:
        raise ConfigError(str(exc)) from None


def check_layout(config: RunConfig) -> None:
    """What this launcher cannot lay out: several nodes (deploy/slurm/dapo.sub and the Helm chart do)."""
    if config.cluster.num_nodes > 1:
        raise ConfigError(
            f"cluster.num_nodes is {config.cluster.num_nodes}: `dapo run` starts every service on this node; "
            f"spread a run over several nodes with Slurm (sbatch --nodes={config.cluster.num_nodes} "
            "deploy/slurm/dapo.sub) or the Helm chart (helm/dapo)"
        )

"""Disjoint CPU sets for the local launcher's services on a CPU-only machine.

When the rollout server and the trainer share a small machine's cores, the scheduler moves both over
every core and each slows the other (bench/RESULTS.md, "Overlap"). With `cluster.cpu_affinity_enabled`
(the default) and at least two usable CPUs, the launcher gives the rollout server(s) the first
`cluster.rollout_cpus` CPUs (default: half, rounded down) and the trainer the rest; the reward service
and the controller, which work only between generation and training, share the rollout servers' CPUs,
so that the trainer's are its own. Each service's OpenMP/torch threads are set to the size of its set
(the trainer's divided over its ranks). vLLM's CPU worker binds its threads inside the set it is given
(it reads the process's affinity). GPU runs and single-CPU machines are left as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from dapo.config import ConfigError, RunConfig


@dataclass(frozen=True)
class CpuPlan:
    """The CPU set of each kind of service (None: that kind is not pinned) and why."""

    rollout: frozenset[int] | None
    trainer: frozenset[int] | None
    shared: frozenset[int] | None
    """Reward service and controller."""
    message: str
    """One line saying what was done, for the launcher's log."""

    def threads(self, cpus: frozenset[int] | None, processes: int = 1) -> dict[str, str]:
        """OMP_NUM_THREADS for a service pinned to `cpus` with `processes` compute processes."""
        if cpus is None:
            return {}
        return {"OMP_NUM_THREADS": str(max(1, len(cpus) // processes))}


def usable_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0))


def cpu_list(cpus: frozenset[int]) -> str:
    """`cpus` the way taskset and /proc write them: "0-3,6"."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def plan_cpu_sets(config: RunConfig, cpus: list[int] | None = None, trainer_ranks: int = 1) -> CpuPlan:
    """Split `cpus` (default: this process's usable CPUs) between rollout and trainer per `config`."""
    cluster = config.cluster
    available = usable_cpus() if cpus is None else sorted(cpus)
    if not cluster.cpu_affinity_enabled:
        return CpuPlan(None, None, None, "CPU affinity off (cluster.cpu_affinity_enabled=false)")
    if cluster.gpus_per_node > 0:
        return CpuPlan(None, None, None, "CPU affinity not set: a GPU run (cluster.gpus_per_node > 0)")
    if len(available) < 2:
        return CpuPlan(
            None, None, None, f"CPU affinity not set: only {len(available)} usable CPU, nothing to split"
        )
    rollout_count = cluster.rollout_cpus if cluster.rollout_cpus is not None else len(available) // 2
    if rollout_count >= len(available):
        raise ConfigError(
            f"cluster.rollout_cpus ({rollout_count}) must leave the trainer at least one of the "
            f"{len(available)} usable CPUs ({cpu_list(frozenset(available))}); lower it or set "
            "cluster.cpu_affinity_enabled=false"
        )
    rollout = frozenset(available[:rollout_count])
    trainer = frozenset(available[rollout_count:])
    per_rank = max(1, len(trainer) // trainer_ranks)
    message = (
        f"CPU affinity: rollout server(s), reward service and controller on CPU {cpu_list(rollout)} "
        f"(OMP_NUM_THREADS={len(rollout)}), trainer on CPU {cpu_list(trainer)} "
        f"({trainer_ranks} rank(s), OMP_NUM_THREADS={per_rank}); cluster.cpu_affinity_enabled=false "
        "turns this off"
    )
    return CpuPlan(rollout, trainer, rollout, message)

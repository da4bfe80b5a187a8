"""Starting a run's services: as local processes (`dapo run`, `dapo up`) or as the steps of a Slurm job
(`dapo slurm-plan`).

This package sits above the four services: it imports their settings models (to hand each service its
settings) and nothing of theirs else but the controller's reporting; no service imports it.

- `services`: each service's settings for a run config, the GPU split, the checks before anything starts;
- `service_process`: one supervised service process (restarts, niceness, CPU set, stop);
- `cpu_sets`: the CPU sets of rollout and trainer on a shared CPU machine;
- `launcher`: `dapo run` / `dapo up`;
- `slurm`: the services of a run laid out over a Slurm job's nodes.
"""

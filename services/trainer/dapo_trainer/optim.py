"""AdamW and its learning-rate schedule.

Without `policy.scheduler`: linear warm-up from 0 to `lr` over `warmup_steps` optimizer steps, then
constant. With it (NeMo RL's form): the listed `torch.optim.lr_scheduler` classes, chained at the
milestones by `SequentialLR`, stepped once per training step (TrainBatch), as NeMo RL steps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, SequentialLR

from dapo.config import OptimizerConfig
from dapo.config.schema import SchedulerMilestones, SchedulerStep


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier for optimizer step `step` (0-based): (step + 1) / warmup_steps during warm-up, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def build_scheduler(
    optimizer: torch.optim.Optimizer, entries: Sequence[SchedulerStep | SchedulerMilestones]
) -> LRScheduler:
    """NeMo RL's scheduler list: one scheduler, or several chained at the `milestones` entry."""
    schedulers: list[LRScheduler] = []
    milestones: list[int] = []
    for entry in entries:
        if isinstance(entry, SchedulerMilestones):
            milestones = list(entry.milestones)
            continue
        cls = getattr(torch.optim.lr_scheduler, entry.name.removeprefix("torch.optim.lr_scheduler."))
        kwargs = {k: int(v) if k in ("total_iters", "T_max") else v for k, v in entry.kwargs.items()}
        schedulers.append(cls(optimizer, **kwargs))
    if len(schedulers) == 1:
        return schedulers[0]
    return SequentialLR(optimizer, schedulers, milestones=milestones)


def build_optimizer(
    model: torch.nn.Module,
    config: OptimizerConfig,
    schedule: Sequence[SchedulerStep | SchedulerMilestones] | None = None,
) -> tuple[torch.optim.AdamW, LRScheduler]:
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    if schedule is not None:
        return optimizer, build_scheduler(optimizer, schedule)
    warmup_steps = config.warmup_steps
    scheduler = LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))
    return optimizer, scheduler

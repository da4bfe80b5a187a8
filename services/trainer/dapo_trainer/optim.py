"""AdamW and its learning-rate schedule: linear warm-up from 0 to `lr` over `warmup_steps`, then constant."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from dapo.config import OptimizerConfig


def warmup_factor(step: int, warmup_steps: int) -> float:
    """LR multiplier for optimizer step `step` (0-based): (step + 1) / warmup_steps during warm-up, then 1."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def build_optimizer(model: torch.nn.Module, config: OptimizerConfig) -> tuple[torch.optim.AdamW, LambdaLR]:
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    warmup_steps = config.warmup_steps
    scheduler = LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))
    return optimizer, scheduler

"""Training on one TrainBatch: old log-probs, then one optimizer step per `train_global_batch_size`
sequences (a forward that returns the loss over the global token count, computed by
`dapo.algo.fused_policy_loss` inside the model's forward; backward, gradient clipping, AdamW).

Old log-probs are the trainer's own at the start of the batch. The first optimizer step's forward runs
at exactly those weights, so its own detached log-probs serve as old ones; only the sequences of later
optimizer steps need a pass without grad before the first update (none with one step per batch).
The per-micro-batch metrics of all ranks are gathered to rank 0 and combined with
`dapo.algo.combine_metrics`, which gives exactly the whole batch's figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from dapo.algo import LossOptions, combine_metrics
from dapo.batch import TrainBatch
from dapo.config import RunConfig
from dapo_trainer.batches import MicroBatch, collate, loss_denominator, plan_batch
from dapo_trainer.distributed import DistContext, gather_to_main
from dapo_trainer.model import LogprobModel, LossInputs


@dataclass
class StepTimes:
    forward: float = 0.0
    backward: float = 0.0
    optimizer: float = 0.0


@dataclass
class BatchResult:
    """Rank 0's figures for one TrainBatch (other ranks hold partial ones)."""

    metrics: dict[str, float] = field(default_factory=dict)
    times: StepTimes = field(default_factory=StepTimes)
    num_optimizer_steps: int = 0


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


def loss_options(config: RunConfig) -> LossOptions:
    """The run's loss options, built (and checked) once."""
    loss = config.loss_fn
    assert loss.aggregation is not None  # the schema fills it in from token_level_loss
    return LossOptions(
        ratio_clip_min=loss.ratio_clip_min,
        ratio_clip_max=loss.ratio_clip_max,
        ratio_clip_c=loss.ratio_clip_c,
        tis_cap=loss.truncated_importance_sampling_ratio if loss.use_importance_sampling_correction else None,
        aggregation=loss.aggregation,
        log_ratio_clamp=loss.log_ratio_clamp,
        max_response_length=config.max_response_length,
    )


@dataclass
class _Tally:
    """What one rank collects over a batch's optimizer steps."""

    raw_metrics: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    num_tokens: int = 0


def train_on_batch(
    model: LogprobModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: TrainBatch,
    config: RunConfig,
    ctx: DistContext,
    pad_token_id: int,
) -> BatchResult:
    """Apply `batch` (every rank calls this with the same batch); returns rank 0's metrics."""
    policy = config.policy
    plan = plan_batch(
        batch,
        global_batch_size=policy.train_global_batch_size,
        micro_batch_size=policy.train_micro_batch_size,
        max_tokens=policy.max_tokens_per_microbatch,
        world_size=ctx.world_size,
    )
    micro_batches = [
        [collate(batch, indices, pad_token_id).to(ctx.device) for indices in step_plan[ctx.rank]]
        for step_plan in plan
    ]
    clock = _Clock(ctx.device)
    times = StepTimes()
    model.train()
    old_logps = _old_logps(model, micro_batches, clock, times)
    options = loss_options(config)
    # Our warm-up counts optimizer steps; NeMo RL's policy.scheduler counts training steps (batches).
    per_optimizer_step = config.policy.scheduler is None
    max_norm = policy.max_grad_norm if policy.max_grad_norm is not None else float("inf")
    tally = _Tally()
    for step_index, (step_plan, step_batches) in enumerate(zip(plan, micro_batches, strict=True)):
        all_indices = [i for rank_plan in step_plan for micro in rank_plan for i in micro]
        denominator = max(1, loss_denominator(batch, all_indices, options.aggregation))
        optimizer.zero_grad(set_to_none=True)
        shared = _StepLoss(denominator, old_logps[step_index], options)
        step_loss = _accumulate_gradients(model, step_batches, shared, ctx.device, clock, times, tally)
        start = clock.now()
        grad_norm = _clip_gradients(model, max_norm)
        tally.lrs.append(float(scheduler.get_last_lr()[0]))
        optimizer.step()
        if per_optimizer_step:
            scheduler.step()
        if ctx.world_size > 1:
            dist.all_reduce(step_loss)
        times.optimizer += clock.now() - start
        tally.losses.append(float(step_loss))
        tally.grad_norms.append(float(grad_norm))

    if not per_optimizer_step:
        scheduler.step()
    return _batch_result(tally, times, len(plan), ctx)


def _old_logps(
    model: LogprobModel, micro_batches: list[list[MicroBatch]], clock: _Clock, times: StepTimes
) -> list[list[torch.Tensor] | None]:
    """old_logps[s][m]: micro-batch m of optimizer step s; None for step 0 (its own forward gives them)."""
    old_logps: list[list[torch.Tensor] | None] = [None]
    if len(micro_batches) > 1:
        start = clock.now()
        with torch.no_grad():
            old_logps += [
                [_forward(model, mb, with_entropy=False)[0] for mb in step] for step in micro_batches[1:]
            ]
        times.forward += clock.now() - start
    return old_logps


@dataclass
class _StepLoss:
    """What the loss of every micro-batch of one optimizer step shares."""

    denominator: int
    old_logps: list[torch.Tensor] | None
    options: LossOptions


def _accumulate_gradients(
    model: LogprobModel,
    step_batches: list[MicroBatch],
    step: _StepLoss,
    device: torch.device,
    clock: _Clock,
    times: StepTimes,
    tally: _Tally,
) -> torch.Tensor:
    """Forward and backward over one optimizer step's micro-batches; returns this rank's summed loss."""
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    for micro_index, mb in enumerate(step_batches):
        start = clock.now()
        loss_inputs = LossInputs(
            advantages_B=mb.advantages_B,
            mask_BR=mb.mask_BR,
            global_denominator=step.denominator,
            old_logp_BR=None if step.old_logps is None else step.old_logps[micro_index],
            rollout_logp_BR=mb.rollout_logp_BR,
            options=step.options,
        )
        loss, metrics = _forward_loss(model, mb, loss_inputs)
        middle = clock.now()
        loss.backward()
        times.forward += middle - start
        times.backward += clock.now() - middle
        step_loss += loss.detach().to(torch.float64)
        tally.num_tokens += mb.num_tokens
        if mb.num_tokens:
            tally.raw_metrics.append(metrics)
    return step_loss


def _clip_gradients(model: LogprobModel, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm`; returns the total norm before clipping (a plain tensor, also under FSDP)."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    return grad_norm


def _batch_result(tally: _Tally, times: StepTimes, num_optimizer_steps: int, ctx: DistContext) -> BatchResult:
    """Gather every rank's tally to rank 0 and combine them into the batch's figures there."""
    gathered = gather_to_main((tally.raw_metrics, tally.num_tokens, times), ctx)
    result = BatchResult(times=times, num_optimizer_steps=num_optimizer_steps)
    if gathered is None:
        return result
    all_metrics = [m for rank_metrics, _, _ in gathered for m in rank_metrics]
    total_tokens = sum(n for _, n, _ in gathered)
    # The slowest rank sets the pace: report the max of each part over ranks.
    result.times = StepTimes(
        forward=max(t.forward for _, _, t in gathered),
        backward=max(t.backward for _, _, t in gathered),
        optimizer=max(t.optimizer for _, _, t in gathered),
    )
    result.metrics = _metrics(tally, result.times, num_optimizer_steps, all_metrics, total_tokens)
    return result


def _metrics(
    tally: _Tally,
    times: StepTimes,
    num_optimizer_steps: int,
    all_metrics: list[dict[str, float]],
    total_tokens: int,
) -> dict[str, float]:
    """The batch's `train/*` figures from every rank's raw micro-batch metrics."""
    combined = combine_metrics(all_metrics) if all_metrics else {}
    compute_s = times.forward + times.backward + times.optimizer
    metrics = {
        "train/loss": sum(tally.losses) / len(tally.losses),
        "train/grad_norm": sum(tally.grad_norms) / len(tally.grad_norms),
        "train/grad_norm_max": max(tally.grad_norms),
        "train/lr": tally.lrs[-1],
        "train/num_optimizer_steps": float(num_optimizer_steps),
        "train/num_loss_tokens": combined.get("num_tokens", 0.0),
        "train/num_tokens": float(total_tokens),
        "train/tokens_per_s": total_tokens / compute_s if compute_s > 0 else 0.0,
        "train/token_loss_mean": combined.get("token_loss_mean", 0.0),
        "train/clip_high_frac": combined.get("clip_high_fraction", 0.0),
        "train/clip_low_frac": combined.get("clip_low_fraction", 0.0),
        "train/ratio_mean": combined.get("ratio_mean", 1.0),
        "train/ratio_max": combined.get("ratio_max", 1.0),
        "train/approx_kl": combined.get("approx_kl", 0.0),
        "train/entropy": combined.get("entropy_mean", 0.0),
        "train/rollout_mismatch": combined.get("rollout_mismatch_mean", 0.0),
    }
    if "dual_clip_fraction" in combined:
        metrics["train/dual_clip_frac"] = combined["dual_clip_fraction"]
    if "tis_truncated_fraction" in combined:
        metrics["train/tis_truncated_frac"] = combined["tis_truncated_fraction"]
    return metrics


def _forward(
    model: LogprobModel, mb: MicroBatch, *, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return model(mb.input_ids_BT, mb.attention_mask_BT, mb.response_start_B, mb.targets_BR, with_entropy)


def _forward_loss(
    model: LogprobModel, mb: MicroBatch, loss_inputs: LossInputs
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's share of the loss (backward gives the gradients) and its raw metrics."""
    loss, metrics, _, _ = model(
        mb.input_ids_BT,
        mb.attention_mask_BT,
        mb.response_start_B,
        mb.targets_BR,
        True,
        loss_inputs=loss_inputs,
    )
    return loss, metrics

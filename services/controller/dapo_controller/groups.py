"""From scored samples to a TrainBatch: overlong shaping, dynamic sampling, advantages.

Pure functions over the loop's data (no I/O), so every rule of DESIGN.md's step 2 is tested alone:
dynamic sampling filters on raw correctness, never on the shaped reward; the overlong penalty is
added to the score; overlong filtering masks truncated answers out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dapo.algo import dynamic_sampling_filter, group_advantages, overlong_filter_mask, overlong_penalty
from dapo.batch import TrainBatch
from dapo.config import RunConfig


@dataclass
class Sample:
    """One generated answer with its verdict."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    version: int
    text: str = ""
    score: float = 0.0
    correct: bool = False
    run_id: str = ""  # the run whose policy version generated it

    @property
    def is_truncated(self) -> bool:
        return self.finish_reason == "length"


@dataclass
class Group:
    """The G answers to one prompt."""

    row_id: str  # the dataset row (PromptRow.id) the prompt came from
    prompt_ids: list[int]  # the prompt's token ids
    ground_truth: str
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Selection:
    """Groups kept by dynamic sampling, and the counts of one generation round."""

    kept: list[Group]
    num_generated: int
    num_all_correct: int
    num_all_wrong: int


def select_groups(groups: list[Group], config: RunConfig) -> Selection:
    """Keep the groups that carry a gradient (mixed correctness), if dynamic sampling is on."""
    if not groups:
        return Selection([], 0, 0, 0)
    correct = [s.correct for g in groups for s in g.samples]
    group_ids = [i for i, g in enumerate(groups) for _ in g.samples]
    result = dynamic_sampling_filter(correct, group_ids)
    kept = [groups[i] for i in result.kept_group_ids] if config.grpo.use_dynamic_sampling else list(groups)
    return Selection(kept, len(groups), result.num_groups_all_correct, result.num_groups_all_wrong)


def shaped_rewards(groups: list[Group], config: RunConfig) -> np.ndarray:
    """Score plus DAPO's soft overlong penalty (eq. 13) when enabled; (N,) over all samples in order."""
    scores = np.array([s.score for g in groups for s in g.samples], dtype=np.float64)
    shaping = config.grpo.reward_shaping
    if not shaping.enabled:
        return scores
    lengths = [len(s.token_ids) for g in groups for s in g.samples]
    return scores + overlong_penalty(
        lengths,
        max_response_length=config.max_response_length,
        overlong_buffer_length=shaping.overlong_buffer_length,
        penalty_factor=shaping.overlong_buffer_penalty,
    )


def overlong_metrics(groups: list[Group], config: RunConfig, prefix: str = "train") -> dict[str, float]:
    """What overlong shaping did to the trained batch `groups`: the mean penalty added to the reward,
    the fraction of answers it penalised (inside the buffer or over the budget) and the fraction that
    overlong filtering masked out of the loss. Zeros when the feature is off."""
    samples = [s for g in groups for s in g.samples]
    if not samples:
        return {}
    penalty = shaped_rewards(groups, config) - np.array([s.score for s in samples], dtype=np.float64)
    filtered = config.grpo.overlong_filtering and any(s.is_truncated for s in samples)
    return {
        f"{prefix}/overlong_penalty": float(penalty.mean()),
        f"{prefix}/overlong_penalized_frac": float(np.mean(penalty < 0)),
        f"{prefix}/overlong_filtered_frac": float(np.mean([s.is_truncated for s in samples]))
        if filtered
        else 0.0,
    }


def build_train_batch(run_id: str, step: int, groups: list[Group], config: RunConfig) -> TrainBatch:
    """The TrainBatch of one step; its id is derived from (run, step) so a resubmission is detectable."""
    if not groups:
        raise ValueError("groups is empty: a TrainBatch needs at least one group")
    samples = [s for g in groups for s in g.samples]
    rewards = shaped_rewards(groups, config)
    group_ids = [i for i, g in enumerate(groups) for _ in g.samples]
    advantages = group_advantages(
        rewards,
        group_ids,
        normalize_std=config.grpo.normalize_rewards,
        leave_one_out=config.grpo.use_leave_one_out_baseline,
    )
    if config.grpo.overlong_filtering:
        keep = np.asarray(overlong_filter_mask([s.is_truncated for s in samples]), dtype=bool)
    else:
        keep = np.ones(len(samples), dtype=bool)
    return TrainBatch(
        run_id=run_id,
        step=step,
        batch_id=f"{run_id}-step{step}",
        prompt_ids=[np.asarray(g.prompt_ids, dtype=np.int32) for g in groups for _ in g.samples],
        response_ids=[np.asarray(s.token_ids, dtype=np.int32) for s in samples],
        rollout_logprobs=[np.asarray(s.logprobs, dtype=np.float32) for s in samples],
        loss_mask=[
            np.full(len(s.token_ids), int(k), dtype=np.uint8) for s, k in zip(samples, keep, strict=True)
        ],
        advantages=advantages,
        versions=np.array([s.version for s in samples], dtype=np.int64),
        metadata={"group_ids": group_ids, "row_ids": [g.row_id for g in groups]},
    )


def sample_metrics(groups: list[Group], prefix: str = "train") -> dict[str, float]:
    """Reward, accuracy and response length over the samples of `groups`."""
    samples = [s for g in groups for s in g.samples]
    if not samples:
        return {}
    return {
        f"{prefix}/reward": float(np.mean([s.score for s in samples])),
        f"{prefix}/accuracy": float(np.mean([s.correct for s in samples])),
        f"{prefix}/response_length": float(np.mean([len(s.token_ids) for s in samples])),
        f"{prefix}/truncated_frac": float(np.mean([s.is_truncated for s in samples])),
    }

"""Group-relative advantages (GRPO; DAPO eq. 9's A_hat_{i,t}), numpy only.

    A_i = (R_i - mean(R_group)) / (std(R_group) + eps)

the same value for every token of answer i. Options:
- `normalize_std=False`: A_i = R_i - mean(R_group) (Dr. GRPO's unscaled baseline).
- `leave_one_out=True`: the baseline of sample i is the mean of the OTHER samples of its group
  (RLOO), (sum(R_group) - R_i) / (G - 1). With `normalize_std` the result is still divided by the
  whole group's std.

Which std: the sample (unbiased, ddof=1) standard deviation, as DAPO's and verl's reference code
(`torch.std`) compute it, so advantages match those recipes bit for bit in expectation; with the
population std (ddof=0) every advantage would be larger by sqrt(G / (G - 1)) (7% at G = 8).
A group of one sample has no baseline: its advantage is 0 (it carries no learning signal, and
ddof=1 is undefined there). A group whose rewards are all equal has advantage 0 everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dapo.algo._groups import group_index


def group_advantages(
    rewards: Sequence[float] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | int,
    *,
    normalize_std: bool = True,
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> np.ndarray:
    """Advantages, one per sample, as a float32 array of shape (N,).

    rewards: (N,) rewards (shaped or not: the advantage uses whatever reward the caller trains on).
    groups: one group id per sample (samples of a group need not be adjacent), or an int group size
        G meaning consecutive runs of G samples form a group.
    """
    rewards_N = np.asarray(rewards, dtype=np.float64)
    if rewards_N.ndim != 1:
        raise ValueError(f"rewards must be one-dimensional (N,), got shape {rewards_N.shape}")
    if rewards_N.size == 0:
        raise ValueError("rewards is empty: expected at least one sample")
    if not np.all(np.isfinite(rewards_N)):
        raise ValueError("rewards must be finite numbers, got NaN or inf")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    index_N, ids = group_index(groups, rewards_N.size)
    num_groups = len(ids)
    count_G = np.bincount(index_N, minlength=num_groups).astype(np.float64)
    sum_G = np.bincount(index_N, weights=rewards_N, minlength=num_groups)
    mean_G = sum_G / count_G
    if leave_one_out:
        others_N = np.maximum(count_G[index_N] - 1, 1)
        baseline_N = (sum_G[index_N] - rewards_N) / others_N
    else:
        baseline_N = mean_G[index_N]
    advantages_N = rewards_N - baseline_N
    if normalize_std:
        squares_G = np.bincount(index_N, weights=(rewards_N - mean_G[index_N]) ** 2, minlength=num_groups)
        std_G = np.sqrt(squares_G / np.maximum(count_G - 1, 1))  # sample std (ddof=1)
        advantages_N = advantages_N / (std_G[index_N] + eps)
    advantages_N[count_G[index_N] < 2] = 0.0
    return advantages_N.astype(np.float32)

"""Dynamic sampling (DAPO section 3.2, the constraint 0 < |{o_i correct}| < G of eq. 11), numpy only.

A group whose answers are all correct or all wrong has zero advantage for every sample, so it adds
no gradient; DAPO drops such groups and keeps generating until the batch is full. This function does
the dropping for one generation round and counts what it dropped; the caller loops.

It filters on raw correctness, never on the (possibly overlong-shaped) reward: shaping can make the
rewards of an all-correct group differ and would wrongly keep it. To make that mistake impossible the
input is correctness itself (booleans, or 0/1 integers), and float rewards are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dapo.algo._groups import group_index


@dataclass(frozen=True)
class DynamicSamplingResult:
    """What one dynamic-sampling pass kept and dropped.

    kept_group_ids: ids of the mixed groups, in order of first appearance.
    kept_indices: (K,) int64 sample indices of the kept groups, ascending (input order).
    """

    kept_group_ids: list[Any]
    kept_indices: np.ndarray
    num_groups_generated: int
    num_groups_kept: int
    num_groups_all_correct: int
    num_groups_all_wrong: int

    @property
    def num_groups_discarded(self) -> int:
        """Groups dropped because every answer was right or every answer was wrong."""
        return self.num_groups_all_correct + self.num_groups_all_wrong

    @property
    def num_samples_kept(self) -> int:
        return int(self.kept_indices.size)

    @property
    def fraction_groups_discarded(self) -> float:
        return self.num_groups_discarded / self.num_groups_generated


def _as_correctness(correct: Sequence[bool] | np.ndarray) -> np.ndarray:
    array = np.asarray(correct)
    if array.ndim != 1:
        raise ValueError(f"correct must be one-dimensional (N,), got shape {array.shape}")
    if array.size == 0:
        raise ValueError("correct is empty: expected at least one sample")
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.integer) and np.isin(array, (0, 1)).all():
        return array.astype(bool)
    raise ValueError(
        f"correct must be booleans (raw correctness, or 0/1 integers), got dtype {array.dtype}; "
        "pass whether each answer is correct, not its (shaped) reward"
    )


def dynamic_sampling_filter(
    correct: Sequence[bool] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | int,
) -> DynamicSamplingResult:
    """Keep the groups with at least one correct and at least one wrong answer.

    correct: (N,) whether each answer is correct (raw verifier verdict).
    groups: one group id per sample, or an int group size G (consecutive runs of G samples).
    A group of one sample is always uniform, so it is always dropped.
    """
    correct_N = _as_correctness(correct)
    index_N, ids = group_index(groups, correct_N.size)
    num_groups = len(ids)
    count_G = np.bincount(index_N, minlength=num_groups)
    num_correct_G = np.bincount(index_N, weights=correct_N.astype(np.float64), minlength=num_groups)
    is_all_correct_G = num_correct_G == count_G
    is_all_wrong_G = num_correct_G == 0
    is_kept_G = ~(is_all_correct_G | is_all_wrong_G)
    return DynamicSamplingResult(
        kept_group_ids=[gid for gid, kept in zip(ids, is_kept_G, strict=True) if kept],
        kept_indices=np.flatnonzero(is_kept_G[index_N]).astype(np.int64),
        num_groups_generated=num_groups,
        num_groups_kept=int(is_kept_G.sum()),
        num_groups_all_correct=int(is_all_correct_G.sum()),
        num_groups_all_wrong=int((is_all_wrong_G & ~is_all_correct_G).sum()),
    )

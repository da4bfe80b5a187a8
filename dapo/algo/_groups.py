"""Group bookkeeping shared by the numpy-only modules (advantages, dynamic sampling)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def group_index(groups: Sequence[Any] | np.ndarray | int, num_samples: int) -> tuple[np.ndarray, list[Any]]:
    """Map samples to dense group numbers.

    `groups` is either one group id per sample (any hashable: ints, strings), or an int group size G
    meaning consecutive runs of G samples form a group. Returns (index_N, ids) where `index_N[i]` is the
    dense group number of sample i and `ids[k]` the id of group k, groups in order of first appearance.
    """
    if isinstance(groups, (int, np.integer)) and not isinstance(groups, bool):
        size = int(groups)
        if size < 1:
            raise ValueError(f"group_size must be >= 1, got {size}")
        if num_samples % size:
            raise ValueError(f"group_size ({size}) must divide the number of samples ({num_samples})")
        num_groups = num_samples // size
        return np.repeat(np.arange(num_groups, dtype=np.int64), size), list(range(num_groups))
    ids: list[Any] = groups.tolist() if isinstance(groups, np.ndarray) else list(groups)  # type: ignore[arg-type]
    if len(ids) != num_samples:
        raise ValueError(
            f"group_ids must have one id per sample: got {len(ids)} ids for {num_samples} samples"
        )
    dense: dict[Any, int] = {}
    index = np.empty(num_samples, dtype=np.int64)
    for i, gid in enumerate(ids):
        try:
            index[i] = dense.setdefault(gid, len(dense))
        except TypeError:
            raise ValueError(f"group_ids must be hashable, got {type(gid).__name__} at index {i}") from None
    return index, list(dense)

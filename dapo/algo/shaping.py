"""Overlong reward shaping and overlong filtering (DAPO section 3.4), numpy only.

`overlong_penalty` is DAPO eq. 13, the soft overlong punishment added to the correctness reward:

    R_length(L) = 0                                  if L <= L_max - L_cache
                = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
                = -1                                 if L > L_max

scaled by `penalty_factor` (DAPO uses 1; verl's `overlong_buffer.penalty_factor`). Departure: with
`L_cache = 0` the middle branch is empty and eq. 13 would divide by zero; we give 0 up to L_max and
-factor beyond, the limit of the ramp.

`overlong_filter_mask` is DAPO's overlong filtering: truncated answers are masked out of the loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def overlong_penalty(
    response_lengths: Sequence[int] | np.ndarray,
    max_response_length: int,
    overlong_buffer_length: int,
    penalty_factor: float = 1.0,
) -> np.ndarray:
    """The eq. 13 penalty per answer, float32 (N,), in [-penalty_factor, 0]; add it to the reward.

    response_lengths: (N,) answer lengths in tokens (L).
    max_response_length: L_max. overlong_buffer_length: L_cache, 0 <= L_cache <= L_max.
    """
    lengths_N = np.asarray(response_lengths)
    if lengths_N.ndim != 1:
        raise ValueError(f"response_lengths must be one-dimensional (N,), got shape {lengths_N.shape}")
    if lengths_N.size and not np.issubdtype(lengths_N.dtype, np.integer):
        raise ValueError(f"response_lengths must be integers (token counts), got dtype {lengths_N.dtype}")
    if lengths_N.size and lengths_N.min() < 0:
        raise ValueError(f"response_lengths must be >= 0, got {int(lengths_N.min())}")
    if max_response_length < 1:
        raise ValueError(f"max_response_length must be >= 1, got {max_response_length}")
    if not 0 <= overlong_buffer_length <= max_response_length:
        raise ValueError(
            f"overlong_buffer_length must be in [0, max_response_length={max_response_length}], "
            f"got {overlong_buffer_length}"
        )
    if not penalty_factor >= 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    lengths = lengths_N.astype(np.float64)
    start = max_response_length - overlong_buffer_length  # L_max - L_cache
    if overlong_buffer_length > 0:
        ramp = (start - lengths) / overlong_buffer_length
    else:
        ramp = np.zeros_like(lengths)
    penalty_N = np.where(lengths <= start, 0.0, np.where(lengths <= max_response_length, ramp, -1.0))
    return (penalty_N * penalty_factor).astype(np.float32)


def overlong_filter_mask(is_truncated: Sequence[bool] | np.ndarray) -> np.ndarray:
    """(N,) bool: True for answers that stay in the loss, False for truncated ones (overlong filtering).

    Multiply (or AND) it into each sequence's token loss mask; the loss denominators must then be
    computed from the filtered mask so truncated answers count nowhere.
    """
    truncated_N = np.asarray(is_truncated)
    if truncated_N.ndim != 1:
        raise ValueError(f"is_truncated must be one-dimensional (N,), got shape {truncated_N.shape}")
    is_bool = truncated_N.size == 0 or truncated_N.dtype == np.bool_
    if not is_bool and not (
        np.issubdtype(truncated_N.dtype, np.integer) and np.isin(truncated_N, (0, 1)).all()
    ):
        raise ValueError(f"is_truncated must be booleans, got dtype {truncated_N.dtype}")
    return ~truncated_N.astype(bool)

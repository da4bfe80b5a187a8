"""Dynamic sampling and overlong shaping/filtering: counts and values by hand, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dapo.algo import dynamic_sampling_filter, overlong_filter_mask, overlong_penalty


def test_dynamic_sampling_keeps_mixed_groups_and_counts_the_rest() -> None:
    correct = [True, True, False, False, True, False, True, True, True, False, False, False]
    groups = ["q0", "q0", "q1", "q1", "q2", "q2", "q3", "q3", "q4", "q4", "q5", "q5"]
    result = dynamic_sampling_filter(correct, groups)
    assert result.kept_group_ids == ["q2", "q4"]
    np.testing.assert_array_equal(result.kept_indices, [4, 5, 8, 9])
    assert result.num_groups_generated == 6
    assert result.num_groups_kept == 2
    assert result.num_groups_all_correct == 2
    assert result.num_groups_all_wrong == 2
    assert result.num_groups_discarded == 4
    assert result.num_samples_kept == 4
    assert result.fraction_groups_discarded == pytest.approx(4 / 6)


def test_dynamic_sampling_by_group_size_and_interleaved_ids() -> None:
    by_size = dynamic_sampling_filter(np.array([1, 0, 1, 1], dtype=np.int64), 2)
    assert by_size.kept_group_ids == [0]
    np.testing.assert_array_equal(by_size.kept_indices, [0, 1])
    interleaved = dynamic_sampling_filter([True, True, False, True], [7, 9, 7, 9])
    assert interleaved.kept_group_ids == [7]
    np.testing.assert_array_equal(interleaved.kept_indices, [0, 2])
    assert interleaved.num_groups_all_correct == 1


def test_dynamic_sampling_drops_groups_of_one() -> None:
    result = dynamic_sampling_filter([True, False], [0, 1])
    assert result.num_groups_kept == 0
    assert (result.num_groups_all_correct, result.num_groups_all_wrong) == (1, 1)


def test_dynamic_sampling_rejects_rewards_instead_of_correctness() -> None:
    with pytest.raises(ValueError, match="correct must be booleans .* not its \\(shaped\\) reward"):
        dynamic_sampling_filter([1.0, -0.5], 2)
    with pytest.raises(ValueError, match="correct must be booleans"):
        dynamic_sampling_filter(np.array([2, 0]), 2)
    with pytest.raises(ValueError, match="correct is empty"):
        dynamic_sampling_filter([], 1)
    with pytest.raises(ValueError, match="group_ids must have one id per sample"):
        dynamic_sampling_filter([True, False], [0])


def test_overlong_penalty_eq13_every_branch() -> None:
    # L_max = 20, L_cache = 4: zero up to 16, linear to -1 at 20, -1 beyond.
    lengths = [0, 16, 17, 18, 20, 21, 100]
    penalty = overlong_penalty(lengths, 20, 4)
    np.testing.assert_allclose(penalty, [0.0, 0.0, -0.25, -0.5, -1.0, -1.0, -1.0], rtol=1e-6)
    assert penalty.dtype == np.float32
    np.testing.assert_allclose(overlong_penalty([18, 25], 20, 4, penalty_factor=0.5), [-0.25, -0.5])


def test_overlong_penalty_without_buffer_is_a_step() -> None:
    np.testing.assert_array_equal(overlong_penalty([19, 20, 21], 20, 0), [0.0, 0.0, -1.0])


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([-1], 20, 4), {}, "response_lengths must be >= 0"),
        (([1.5], 20, 4), {}, "response_lengths must be integers"),
        (([[1]], 20, 4), {}, "response_lengths must be one-dimensional"),
        (([1], 0, 0), {}, "max_response_length must be >= 1"),
        (([1], 20, 21), {}, r"overlong_buffer_length must be in \[0, max_response_length=20\]"),
        (([1], 20, -1), {}, "overlong_buffer_length must be in"),
        (([1], 20, 4), {"penalty_factor": -1.0}, "penalty_factor must be >= 0"),
    ],
)
def test_overlong_penalty_bad_input(args, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        overlong_penalty(*args, **kwargs)


def test_overlong_filter_mask_keeps_untruncated() -> None:
    np.testing.assert_array_equal(overlong_filter_mask([True, False, True]), [False, True, False])
    np.testing.assert_array_equal(overlong_filter_mask(np.array([0, 1])), [True, False])
    with pytest.raises(ValueError, match="is_truncated must be booleans"):
        overlong_filter_mask([0.5])
    with pytest.raises(ValueError, match="is_truncated must be one-dimensional"):
        overlong_filter_mask([[True]])

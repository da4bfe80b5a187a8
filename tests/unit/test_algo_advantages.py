"""Group-relative advantages: values by hand, options, groups given by id or by size, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from dapo.algo import group_advantages


def test_default_is_mean_and_sample_std_per_group() -> None:
    rewards = [1.0, -1.0, -1.0, -1.0, 1.0, 1.0]
    advantages = group_advantages(rewards, 3, eps=0.0)
    first = np.array([1.0, -1.0, -1.0])
    expected_first = (first - first.mean()) / first.std(ddof=1)
    second = np.array([-1.0, 1.0, 1.0])
    expected_second = (second - second.mean()) / second.std(ddof=1)
    np.testing.assert_allclose(advantages, np.concatenate([expected_first, expected_second]), rtol=1e-6)
    assert advantages.dtype == np.float32


def test_uses_unbiased_std_like_torch_std() -> None:
    # Two samples +1/-1: mean 0, sample std sqrt(2) (population std would be 1).
    advantages = group_advantages([1.0, -1.0], 2, eps=0.0)
    np.testing.assert_allclose(advantages, [1 / np.sqrt(2), -1 / np.sqrt(2)], rtol=1e-6)


def test_group_ids_need_not_be_adjacent_and_may_be_strings() -> None:
    by_id = group_advantages([1.0, 5.0, 3.0, 7.0], ["a", "b", "a", "b"], eps=0.0)
    by_size = group_advantages([1.0, 3.0, 5.0, 7.0], 2, eps=0.0)
    np.testing.assert_allclose(by_id, by_size[[0, 2, 1, 3]], rtol=1e-6)


def test_without_std_scaling_is_mean_baseline() -> None:
    advantages = group_advantages([1.0, 2.0, 6.0], [0, 0, 0], normalize_std=False)
    np.testing.assert_allclose(advantages, [-2.0, -1.0, 3.0], rtol=1e-6)


def test_leave_one_out_baseline_is_mean_of_others() -> None:
    advantages = group_advantages([1.0, 2.0, 6.0], 3, normalize_std=False, leave_one_out=True)
    np.testing.assert_allclose(advantages, [1 - 4.0, 2 - 3.5, 6 - 1.5], rtol=1e-6)
    scaled = group_advantages([1.0, 2.0, 6.0], 3, leave_one_out=True, eps=0.0)
    np.testing.assert_allclose(scaled, np.array([-3.0, -1.5, 4.5]) / np.std([1, 2, 6], ddof=1), rtol=1e-6)


def test_group_of_one_and_uniform_group_get_zero() -> None:
    advantages = group_advantages([5.0, 1.0, 1.0, 1.0], [0, 1, 1, 1])
    np.testing.assert_array_equal(advantages, [0.0, 0.0, 0.0, 0.0])
    assert group_advantages([3.0], 1, leave_one_out=True)[0] == 0.0


@pytest.mark.parametrize(
    ("rewards", "groups", "kwargs", "message"),
    [
        ([], 1, {}, "rewards is empty"),
        ([[1.0, 2.0]], 1, {}, "rewards must be one-dimensional"),
        ([1.0, float("nan")], 2, {}, "rewards must be finite"),
        ([1.0, 2.0, 3.0], 2, {}, r"group_size \(2\) must divide the number of samples \(3\)"),
        ([1.0, 2.0], 0, {}, "group_size must be >= 1"),
        ([1.0, 2.0], [0], {}, "group_ids must have one id per sample"),
        ([1.0, 2.0], [[0], [1]], {}, "group_ids must be hashable"),
        ([1.0, 2.0], 2, {"eps": -1.0}, "eps must be >= 0"),
    ],
)
def test_bad_input_names_the_argument(rewards, groups, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        group_advantages(rewards, groups, **kwargs)

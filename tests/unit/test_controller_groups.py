"""The controller's step logic: dynamic sampling on raw correctness, overlong shaping, the TrainBatch."""

from __future__ import annotations

import numpy as np
import pytest
from dapo_controller.groups import (
    Group,
    Sample,
    build_train_batch,
    overlong_metrics,
    sample_metrics,
    select_groups,
)

from dapo.batch import TrainBatch
from dapo.config import load_config

SMALL = [
    "policy.train_global_batch_size=4",
    "policy.train_micro_batch_size=4",
    "grpo.num_prompts_per_step=2",
    "grpo.num_generations_per_prompt=2",
    "policy.generation.max_new_tokens=8",
]


def group(
    name: str, verdicts: list[bool], lengths: list[int] | None = None, truncated: bool = False
) -> Group:
    lengths = lengths or [2] * len(verdicts)
    g = Group(row_id=name, prompt_ids=[1, 2, 3], ground_truth="5")
    for ok, n in zip(verdicts, lengths, strict=True):
        g.samples.append(
            Sample(
                token_ids=list(range(n)),
                logprobs=[-0.5] * n,
                finish_reason="length" if truncated else "stop",
                version=3,
                score=1.0 if ok else -1.0,
                correct=ok,
            )
        )
    return g


def test_dynamic_sampling_keeps_only_mixed_groups() -> None:
    config = load_config(None, SMALL)
    groups = [group("a", [True, True]), group("b", [True, False]), group("c", [False, False])]
    selection = select_groups(groups, config)
    assert [g.row_id for g in selection.kept] == ["b"]
    assert (selection.num_generated, selection.num_all_correct, selection.num_all_wrong) == (3, 1, 1)


def test_dynamic_sampling_off_keeps_everything() -> None:
    config = load_config(None, [*SMALL, "grpo.use_dynamic_sampling=false"])
    groups = [group("a", [True, True]), group("b", [True, False])]
    assert len(select_groups(groups, config).kept) == 2


def test_filter_uses_correctness_not_the_shaped_reward() -> None:
    # Both answers are wrong but one is overlong: shaped rewards differ, correctness does not.
    config = load_config(
        None, [*SMALL, "grpo.reward_shaping.enabled=true", "grpo.reward_shaping.overlong_buffer_length=4"]
    )
    groups = [group("a", [False, False], lengths=[2, 8])]
    assert select_groups(groups, config).kept == []


def test_batch_advantages_and_overlong_shaping() -> None:
    config = load_config(
        None, [*SMALL, "grpo.reward_shaping.enabled=true", "grpo.reward_shaping.overlong_buffer_length=4"]
    )
    # L_max 8, L_cache 4: length 6 gets -0.5, length 2 gets 0.
    batch = build_train_batch("r1", 3, [group("a", [True, False], lengths=[6, 2])], config)
    rewards = np.array([1.0 - 0.5, -1.0])
    expected = (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(batch.advantages, expected, rtol=1e-5)
    assert batch.batch_id == "r1-step3" and batch.step == 3
    assert [len(r) for r in batch.response_ids] == [6, 2]
    assert batch.versions.tolist() == [3, 3]
    again = TrainBatch.from_fields(batch.to_fields())
    np.testing.assert_array_equal(again.advantages, batch.advantages)


def test_overlong_filtering_masks_truncated_answers() -> None:
    config = load_config(None, [*SMALL, "grpo.overlong_filtering=true"])
    g = group("a", [True, False])
    g.samples[1].finish_reason = "length"
    batch = build_train_batch("r1", 0, [g], config)
    assert batch.loss_mask[0].tolist() == [1, 1] and batch.loss_mask[1].tolist() == [0, 0]


def test_overlong_metrics_report_the_penalty_and_the_filter() -> None:
    shaped = [*SMALL, "grpo.reward_shaping.enabled=true", "grpo.reward_shaping.overlong_buffer_length=4"]
    # L_max 8, L_cache 4: lengths 2, 6 and 8 (truncated) get 0, -0.5 and -1.
    groups = [group("a", [True, False], lengths=[2, 6]), group("b", [False], lengths=[8], truncated=True)]
    metrics = overlong_metrics(groups, load_config(None, [*shaped, "grpo.overlong_filtering=true"]))
    assert metrics["train/overlong_penalty"] == pytest.approx(-0.5)
    assert metrics["train/overlong_penalized_frac"] == pytest.approx(2 / 3)
    assert metrics["train/overlong_filtered_frac"] == pytest.approx(1 / 3)
    off = overlong_metrics(groups, load_config(None, SMALL))
    assert off == {
        "train/overlong_penalty": 0.0,
        "train/overlong_penalized_frac": 0.0,
        "train/overlong_filtered_frac": 0.0,
    }
    assert overlong_metrics([], load_config(None, SMALL)) == {}


def test_empty_groups_are_an_error() -> None:
    with pytest.raises(ValueError, match="groups is empty"):
        build_train_batch("r1", 0, [], load_config(None, SMALL))


def test_sample_metrics() -> None:
    metrics = sample_metrics([group("a", [True, False], lengths=[2, 4])], prefix="val")
    assert (
        metrics["val/accuracy"] == 0.5
        and metrics["val/reward"] == 0.0
        and metrics["val/response_length"] == 3.0
    )


# --- NeMo RL's advantage and shaping keys -------------------------------------------------------------------


def test_normalize_rewards_divides_the_advantages_by_the_group_std() -> None:
    groups = [group("a", [True, False, False, False])]
    rewards = np.array([1.0, -1.0, -1.0, -1.0])
    centred = rewards - rewards.mean()
    config = [*SMALL, "grpo.num_generations_per_prompt=4", "grpo.num_prompts_per_step=1"]
    scaled = build_train_batch("r", 0, groups, load_config(None, config)).advantages
    np.testing.assert_allclose(scaled, centred / (rewards.std(ddof=1) + 1e-6), rtol=1e-5)
    # NeMo RL's normalize_rewards: false keeps the mean baseline only (Dr. GRPO).
    plain = build_train_batch("r", 0, groups, load_config(None, [*config, "grpo.normalize_rewards=false"]))
    np.testing.assert_allclose(plain.advantages, centred, rtol=1e-6)


def test_leave_one_out_baseline_is_the_mean_of_the_other_answers() -> None:
    groups = [group("a", [True, False, False, False])]
    config = load_config(
        None,
        [
            *SMALL,
            "grpo.num_generations_per_prompt=4",
            "grpo.num_prompts_per_step=1",
            "grpo.use_leave_one_out_baseline=true",
            "grpo.normalize_rewards=false",
        ],
    )
    advantages = build_train_batch("r", 0, groups, config).advantages
    # 1 - mean(-1, -1, -1) = 2; -1 - mean(1, -1, -1) = -2/3
    np.testing.assert_allclose(advantages, [2.0, -2 / 3, -2 / 3, -2 / 3], rtol=1e-6)


def test_overlong_penalty_and_max_response_length_set_the_ramp() -> None:
    config = load_config(
        None,
        [
            *SMALL,
            "grpo.normalize_rewards=false",
            "grpo.reward_shaping.enabled=true",
            "grpo.reward_shaping.overlong_buffer_length=4",
            "grpo.reward_shaping.overlong_buffer_penalty=0.5",
            "grpo.reward_shaping.max_response_length=6",
        ],
    )
    # L_max 6 (not max_new_tokens 8), L_cache 4, penalty 0.5: length 4 is half-way down the ramp
    # (-0.25), length 2 is before it (0).
    batch = build_train_batch("r", 0, [group("a", [True, True], lengths=[4, 2])], config)
    shaped = np.array([1.0 - 0.25, 1.0])
    np.testing.assert_allclose(batch.advantages, shaped - shaped.mean(), rtol=1e-6)
    config.grpo.reward_shaping.enabled = False  # the keys do nothing while shaping is off
    assert build_train_batch(
        "r", 0, [group("a", [True, True], lengths=[4, 2])], config
    ).advantages.tolist() == [
        0.0,
        0.0,
    ]

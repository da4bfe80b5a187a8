"""DAPO policy loss: every clip branch by hand, dual clip, TIS, k3 KL, aggregation modes, exact
micro-batch/rank splitting, exact metric combination, and bad input."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from dapo.algo import LossOptions, combine_metrics, loss_denominator
from dapo.algo import policy_loss as algo_policy_loss

CLIPS: dict[str, Any] = {"ratio_clip_min": 0.2, "ratio_clip_max": 0.28}
OPTION_FIELDS = {f.name for f in dataclasses.fields(LossOptions)}


def policy_loss(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """`dapo.algo.policy_loss` with the options given as keywords: builds `LossOptions` from them (as
    the trainer builds them from the config) and passes the rest on."""
    options = LossOptions(**{key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS})
    return algo_policy_loss(*args, options=options, **kwargs)


def one_token(ratio: float, advantage: float, **kwargs: Any) -> tuple[float, float, dict[str, float]]:
    """Loss, d loss / d logp and metrics of a batch with one token whose ratio is `ratio`."""
    logp = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 1, dtype=torch.float64)
    mask = torch.ones(1, 1, dtype=torch.bool)
    options = {**CLIPS, "global_denominator": 1, **kwargs}
    loss, metrics = policy_loss(logp, old, torch.tensor([advantage], dtype=torch.float64), mask, **options)
    loss.backward()
    assert logp.grad is not None
    return loss.item(), float(logp.grad), metrics


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss", "grad", "clip_high", "clip_low"),
    [
        (1.5, 0.0, 0.0, 0.0, 0, 0),  # A = 0: nothing
        (0.5, 0.0, 0.0, 0.0, 0, 0),
        (1.5, 2.0, -2.0 * 1.28, 0.0, 1, 0),  # A > 0 above 1 + eps_high: clipped, no gradient
        (1.1, 2.0, -2.2, -2.2, 0, 0),  # A > 0 inside: -A r, gradient -A r
        (0.5, 2.0, -1.0, -1.0, 0, 0),  # A > 0 below 1 - eps_low: NOT clipped (max picks -A r)
        (0.5, -2.0, 2.0 * 0.8, 0.0, 0, 1),  # A < 0 below 1 - eps_low: clipped, no gradient
        (1.1, -2.0, 2.2, 2.2, 0, 0),  # A < 0 inside
        (1.5, -2.0, 3.0, 3.0, 0, 0),  # A < 0 above 1 + eps_high: NOT clipped (unbounded without dual clip)
    ],
)
def test_clip_branches(ratio, advantage, loss, grad, clip_high, clip_low) -> None:  # type: ignore[no-untyped-def]
    got_loss, got_grad, metrics = one_token(ratio, advantage)
    assert got_loss == pytest.approx(loss, abs=1e-12)
    assert got_grad == pytest.approx(grad, abs=1e-12)
    assert metrics["clip_high_count"] == clip_high
    assert metrics["clip_low_count"] == clip_low
    assert metrics["ratio_max"] == pytest.approx(ratio)
    assert metrics["approx_kl_sum"] == pytest.approx(ratio - 1 - math.log(ratio))
    assert "dual_clip_count" not in metrics


def test_dual_clip_bounds_negative_advantages_only() -> None:
    loss, grad, metrics = one_token(5.0, -2.0, ratio_clip_c=3.0)
    assert (loss, grad, metrics["dual_clip_count"]) == (pytest.approx(6.0), 0.0, 1)
    loss, grad, metrics = one_token(5.0, -2.0)
    assert (loss, grad) == (pytest.approx(10.0), pytest.approx(10.0))
    loss, grad, metrics = one_token(2.0, -2.0, ratio_clip_c=3.0)  # below c: untouched
    assert (loss, grad, metrics["dual_clip_count"]) == (pytest.approx(4.0), pytest.approx(4.0), 0)
    loss, grad, metrics = one_token(5.0, 2.0, ratio_clip_c=3.0)  # A > 0: dual clip never applies
    assert (loss, grad, metrics["dual_clip_count"]) == (pytest.approx(-2.56), 0.0, 0)


def test_truncated_importance_sampling_caps_the_weight() -> None:
    rollout = torch.tensor([[-math.log(3.0), -math.log(1.5)]], dtype=torch.float64)  # old - rollout
    logp = torch.tensor([[math.log(1.1), math.log(1.1)]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    kwargs = {**CLIPS, "global_denominator": 2, "rollout_logp_BT": rollout}
    loss, metrics = policy_loss(logp, old, torch.tensor([1.0]), mask, tis_cap=2.0, **kwargs)
    assert loss.item() == pytest.approx((-1.1 * 2.0 - 1.1 * 1.5) / 2)
    loss.backward()
    assert logp.grad is not None
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.1, -1.1 * 0.75]], dtype=torch.float64))
    assert metrics["tis_truncated_count"] == 1
    assert metrics["rollout_mismatch_sum"] == pytest.approx(math.log(3.0) + math.log(1.5))
    # Without a cap the rollout log-probs feed only the mismatch metric.
    plain, metrics = policy_loss(logp.detach(), old, torch.tensor([1.0]), mask, **kwargs)
    assert plain.item() == pytest.approx(-1.1)
    assert "tis_truncated_count" not in metrics and "rollout_mismatch_sum" in metrics


def test_k3_kl_to_reference() -> None:
    delta = 0.3  # ref - logp
    logp = torch.tensor([[-1.0]], dtype=torch.float64, requires_grad=True)
    ref = logp.detach() + delta
    mask = torch.ones(1, 1, dtype=torch.bool)
    loss, metrics = policy_loss(
        logp,
        logp.detach(),
        torch.tensor([0.0]),
        mask,
        **CLIPS,
        global_denominator=1,
        ref_logp_BT=ref,
        kl_coef=0.1,
    )
    k3 = math.exp(delta) - delta - 1
    assert loss.item() == pytest.approx(0.1 * k3)
    assert metrics["kl_ref_sum"] == pytest.approx(k3)
    loss.backward()
    assert logp.grad is not None
    assert float(logp.grad) == pytest.approx(0.1 * (1 - math.exp(delta)))
    # ref given with kl_coef 0: metric only, no loss term.
    loss, metrics = policy_loss(
        logp, logp.detach(), torch.tensor([0.0]), mask, **CLIPS, global_denominator=1, ref_logp_BT=ref
    )
    assert loss.item() == 0.0 and metrics["kl_ref_sum"] == pytest.approx(k3)


def _hand_batch() -> tuple[torch.Tensor, ...]:
    logp = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    old = torch.zeros(3, 3, dtype=torch.float64)
    advantages = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)  # third sequence fully masked
    return logp, old, advantages, mask


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("token-mean", (-1 - 1 - 2) / 3),  # ratio 1: l = -A per token; 3 tokens
        ("seq-mean-token-mean", (-1 + -2) / 2),  # per-sequence means; 2 sequences with tokens
        ("seq-mean-token-sum-norm", (-2 / 4 + -2 / 4) / 2),  # token sums / L_max = 4; 2 sequences
    ],
)
def test_aggregation_modes_by_hand(aggregation, expected) -> None:  # type: ignore[no-untyped-def]
    logp, old, advantages, mask = _hand_batch()
    denominator = loss_denominator(mask, aggregation)
    assert denominator == (3 if aggregation == "token-mean" else 2)
    loss, metrics = policy_loss(
        logp,
        old,
        advantages,
        mask,
        **CLIPS,
        global_denominator=denominator,
        aggregation=aggregation,
        max_response_length=4,
    )
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert logp.grad is not None
    assert torch.all(logp.grad[~mask] == 0)
    assert (metrics["num_tokens"], metrics["num_sequences"]) == (3, 2)


def test_masked_tokens_do_not_leak_even_with_wild_values() -> None:
    logp, old, advantages, mask = _hand_batch()
    wild_old = old.clone()
    wild_old[~mask] = -1e4  # padding: huge log-ratio, clamped
    loss, metrics = policy_loss(logp, wild_old, advantages, mask, **CLIPS, global_denominator=3)
    assert loss.item() == pytest.approx(-4 / 3)
    assert metrics["ratio_max"] == 1.0
    loss.backward()
    assert logp.grad is not None
    assert torch.isfinite(logp.grad).all() and torch.all(logp.grad[~mask] == 0)


def test_per_token_advantages_match_per_sequence() -> None:
    logp, old, advantages, mask = _hand_batch()
    a, _ = policy_loss(logp, old, advantages, mask, **CLIPS, global_denominator=3)
    b, _ = policy_loss(logp, old, advantages[:, None].expand(3, 3), mask, **CLIPS, global_denominator=3)
    assert a.item() == b.item()


def _random_batch(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    batch, length = 8, 6

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    lengths = torch.randint(0, length + 1, (batch,), generator=generator)
    lengths[3] = 0  # a fully masked sequence
    mask = torch.arange(length)[None, :] < lengths[:, None]
    old = -torch.rand(batch, length, generator=generator, dtype=torch.float64) * 3
    return {
        "logp": old + 0.5 * randn(batch, length),  # ratios spread over both clip bounds
        "old": old,
        "rollout": old + 0.4 * randn(batch, length),
        "ref": old + 0.2 * randn(batch, length),
        "advantages": randn(batch),
        "mask": mask,
        "entropy": torch.rand(batch, length, generator=generator, dtype=torch.float64),
    }


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("full_options", [False, True])
def test_micro_batches_and_ranks_sum_to_the_whole_batch(aggregation: str, full_options: bool) -> None:
    data = _random_batch(seed=7)
    options: dict[str, Any] = {**CLIPS, "aggregation": aggregation, "max_response_length": 6}
    if full_options:
        options.update(ratio_clip_c=3.0, tis_cap=1.5, kl_coef=0.05)

    def run(rows: slice, denominator: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        logp = data["logp"][rows].clone().requires_grad_()
        extra: dict[str, Any] = {"entropy_BT": data["entropy"][rows]}
        if full_options:
            extra.update(rollout_logp_BT=data["rollout"][rows], ref_logp_BT=data["ref"][rows])
        loss, metrics = policy_loss(
            logp,
            data["old"][rows],
            data["advantages"][rows],
            data["mask"][rows],
            global_denominator=denominator,
            **options,
            **extra,
        )
        loss.backward()
        assert logp.grad is not None
        return loss.detach(), logp.grad, metrics

    whole_loss, whole_grad, whole_metrics = run(slice(None), loss_denominator(data["mask"], aggregation))
    # Rank 0 holds rows 0-3 in micro-batches [0:1], [1:3], [3:4]; rank 1 holds rows 4-7 in [4:6], [6:8].
    micro_batches = [slice(0, 1), slice(1, 3), slice(3, 4), slice(4, 6), slice(6, 8)]
    # Every rank sums its micro-batches' shares, then the ranks all-reduce (here: a plain sum).
    denominator = sum(loss_denominator(data["mask"][rows], aggregation) for rows in micro_batches)
    assert denominator == loss_denominator(data["mask"], aggregation)
    parts = [run(rows, denominator) for rows in micro_batches]
    total_loss = sum(loss for loss, _, _ in parts)
    split_grad = torch.cat([grad for _, grad, _ in parts])
    torch.testing.assert_close(total_loss, whole_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(split_grad, whole_grad, atol=1e-6, rtol=0)
    combined, whole = combine_metrics([m for _, _, m in parts]), combine_metrics([whole_metrics])
    assert combined.keys() == whole.keys()
    for key, value in whole.items():
        assert combined[key] == pytest.approx(value, abs=1e-9), key
    if full_options:
        assert whole["clip_high_fraction"] > 0 and whole["clip_low_fraction"] > 0
        assert 0 < whole["tis_truncated_fraction"] < 1


def test_combine_metrics_divides_by_tokens_and_takes_max() -> None:
    a = {"num_tokens": 2.0, "num_sequences": 1.0, "ratio_sum": 2.0, "ratio_max": 1.5, "clip_high_count": 1.0}
    b = {"num_tokens": 0.0, "num_sequences": 0.0, "ratio_sum": 0.0, "ratio_max": 0.0, "clip_high_count": 0.0}
    c = {"num_tokens": 6.0, "num_sequences": 2.0, "ratio_sum": 9.0, "ratio_max": 3.0, "clip_high_count": 0.0}
    combined = combine_metrics([a, b, c])
    assert combined == {
        "num_tokens": 8.0,
        "num_sequences": 3.0,
        "ratio_mean": 11 / 8,
        "ratio_max": 3.0,
        "clip_high_fraction": 1 / 8,
    }
    assert combine_metrics([b])["ratio_mean"] == 0.0
    with pytest.raises(ValueError, match="metrics is empty"):
        combine_metrics([])
    with pytest.raises(ValueError, match=r"metrics\[0\] has no 'num_tokens'"):
        combine_metrics([{"ratio_sum": 1.0}])
    with pytest.raises(ValueError, match=r"metrics\[0\] has unknown key 'bogus'"):
        combine_metrics([{"num_tokens": 1.0, "bogus": 1.0}])


def test_entropy_metric() -> None:
    logp, old, advantages, mask = _hand_batch()
    entropy = torch.full((3, 3), 2.0, dtype=torch.float64)
    entropy[~mask] = float("nan")
    _, metrics = policy_loss(logp, old, advantages, mask, **CLIPS, global_denominator=3, entropy_BT=entropy)
    assert combine_metrics([metrics])["entropy_mean"] == 2.0


def _call(**overrides: Any) -> None:
    logp, old, advantages, mask = _hand_batch()
    arguments: dict[str, Any] = {
        "logp_BT": logp,
        "old_logp_BT": old,
        "advantages": advantages,
        "mask_BT": mask,
        **CLIPS,
        "global_denominator": 3,
    }
    arguments.update(overrides)
    policy_loss(**arguments)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"logp_BT": torch.zeros(3)}, r"logp_BT must be two-dimensional \(B, T\)"),
        (
            {
                "logp_BT": torch.zeros(0, 3),
                "old_logp_BT": torch.zeros(0, 3),
                "advantages": torch.zeros(0),
                "mask_BT": torch.zeros(0, 3, dtype=torch.bool),
            },
            "logp_BT is empty",
        ),
        ({"logp_BT": torch.zeros(3, 3, dtype=torch.int64)}, "logp_BT must be a floating-point tensor"),
        ({"old_logp_BT": torch.zeros(3, 2)}, r"old_logp_BT must have the shape of logp_BT \(3, 3\)"),
        ({"mask_BT": torch.ones(2, 3, dtype=torch.bool)}, "mask_BT must have the shape of logp_BT"),
        ({"rollout_logp_BT": torch.zeros(1, 3)}, "rollout_logp_BT must have the shape"),
        ({"ref_logp_BT": torch.zeros(3, 4)}, "ref_logp_BT must have the shape"),
        ({"entropy_BT": torch.zeros(3)}, "entropy_BT must have the shape"),
        ({"advantages": torch.zeros(2)}, r"advantages must have shape \(B,\) = \(3,\) or \(B, T\)"),
        ({"global_denominator": 0}, "global_denominator must be > 0"),
        ({"global_denominator": torch.tensor(-2.0)}, "global_denominator must be > 0"),
        ({"ratio_clip_c": 1.0}, "ratio_clip_c must be > 1"),
        ({"ratio_clip_min": -0.1}, "ratio_clip_min must be >= 0"),
        ({"ratio_clip_max": -0.1}, "ratio_clip_max must be >= 0"),
        ({"aggregation": "mean"}, "aggregation must be one of"),
        ({"aggregation": "seq-mean-token-sum-norm"}, "max_response_length must be >= 1"),
        ({"tis_cap": 2.0}, "tis_cap is set but rollout_logp_BT is None"),
        ({"tis_cap": 0.0, "rollout_logp_BT": torch.zeros(3, 3)}, "tis_cap must be > 0"),
        ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
        ({"kl_coef": 0.1}, "kl_coef > 0 needs ref_logp_BT"),
        ({"log_ratio_clamp": 0.0}, "log_ratio_clamp must be > 0"),
    ],
)
def test_bad_input_names_the_argument(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_options_are_checked_once_when_built() -> None:
    with pytest.raises(ValueError, match="ratio_clip_c must be > 1"):
        LossOptions(**CLIPS, ratio_clip_c=0.5)
    options = LossOptions(**CLIPS, tis_cap=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tis_cap = -1.0  # type: ignore[misc]
    # What needs a tensor is checked against the call's tensors.
    logp, old, advantages, mask = _hand_batch()
    with pytest.raises(ValueError, match="tis_cap is set but rollout_logp_BT is None"):
        algo_policy_loss(logp, old, advantages, mask, options=options, global_denominator=3)


def test_loss_denominator_bad_input() -> None:
    with pytest.raises(ValueError, match="aggregation must be one of"):
        loss_denominator(torch.ones(1, 1), "sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mask_BT must be two-dimensional"):
        loss_denominator(torch.ones(3))
    assert loss_denominator(torch.tensor([[1.0, 0.0], [0.0, 0.0]])) == 1

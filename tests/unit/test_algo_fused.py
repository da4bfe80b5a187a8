"""The fused loss (`fused_policy_loss`) equals `token_logprobs` + `policy_loss` + backward: loss, raw
metrics, log-probs, entropies and both gradients, for every aggregation mode and chunking; micro-batches
sum to the whole batch; three [T x H x V] matmuls instead of four; bad input."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode, mm_flop

from dapo.algo import LossOptions, combine_metrics, loss_denominator, token_logprobs
from dapo.algo import fused_policy_loss as algo_fused_policy_loss
from dapo.algo import policy_loss as algo_policy_loss

AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
CLIPS: dict[str, Any] = {"ratio_clip_min": 0.2, "ratio_clip_max": 0.28}
OPTION_FIELDS = {f.name for f in dataclasses.fields(LossOptions)}


def _with_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The loss options among `kwargs` as one `LossOptions` (as the trainer builds them), the rest kept."""
    options = LossOptions(**{key: kwargs.pop(key) for key in list(kwargs) if key in OPTION_FIELDS})
    return {**kwargs, "options": options}


def policy_loss(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, float]]:
    return algo_policy_loss(*args, **_with_options(kwargs))


def fused_policy_loss(*args: Any, **kwargs: Any) -> Any:
    return algo_fused_policy_loss(*args, **_with_options(kwargs))


def make_case(
    seed: int,
    batch: int = 7,
    length: int = 6,
    width: int = 5,
    vocab: int = 11,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """A random (B, R) batch: old log-probs near the current ones (ratios over both clip bounds),
    ragged masks with a fully masked row, and wild values at masked positions."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    hidden = randn(batch, length, width)
    weight = randn(vocab, width) * width**-0.5 * 3  # logits of order 3: p far from uniform
    targets = torch.randint(0, vocab, (batch, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    lengths[min(1, batch - 1)] = 0
    mask = torch.arange(length)[None, :] < lengths[:, None]
    with torch.no_grad():
        current, _ = token_logprobs(hidden, weight, targets, temperature=0.7)
    old = current + 0.5 * randn(batch, length)
    old[~mask] = -1e4  # padding: must not leak into the loss or its gradient
    return {
        "hidden": hidden,
        "weight": weight,
        "targets": targets,
        "old": old,
        "rollout": old + 0.4 * randn(batch, length),
        "ref": old + 0.2 * randn(batch, length),
        "advantages": randn(batch),
        "token_advantages": randn(batch, length),
        "mask": mask,
    }


def options_for(aggregation: str, full: bool) -> dict[str, Any]:
    options: dict[str, Any] = {**CLIPS, "aggregation": aggregation, "max_response_length": 9}
    if full:  # dual clip, TIS, k3 KL
        options.update(ratio_clip_c=1.5, tis_cap=1.5, kl_coef=0.05)
    return options


def run(
    case: dict[str, torch.Tensor],
    *,
    fused: bool,
    full: bool,
    aggregation: str,
    chunk_size: int,
    rows: slice = slice(None),
    denominator: int | None = None,
) -> dict[str, Any]:
    """Loss, raw metrics, logp, entropy and gradients of `rows`, fused or not. `full`: given old log-probs,
    per-token advantages, dual clip, TIS, KL, temperature 0.7 and entropy; else old = current, temperature 1."""
    hidden = case["hidden"][rows].clone().requires_grad_()
    weight = case["weight"].clone().requires_grad_()
    targets, mask = case["targets"][rows], case["mask"][rows]
    temperature = 0.7 if full else 1.0
    old = case["old"][rows] if full else None
    advantages = case["token_advantages" if full else "advantages"][rows]
    if denominator is None:
        denominator = max(1, loss_denominator(mask, aggregation))  # type: ignore[arg-type]
    options = options_for(aggregation, full)
    extra = {"rollout": case["rollout"][rows], "ref": case["ref"][rows]} if full else {}
    if fused:
        loss, metrics, logp, entropy = fused_policy_loss(
            hidden,
            weight,
            targets,
            old,
            advantages,
            mask,
            global_denominator=denominator,
            chunk_size=chunk_size,
            temperature=temperature,
            with_entropy=full,
            rollout_logp_BR=extra.get("rollout"),
            ref_logp_BR=extra.get("ref"),
            **options,
        )
        assert not logp.requires_grad
    else:
        logp, entropy = token_logprobs(
            hidden, weight, targets, chunk_size=chunk_size, temperature=temperature, with_entropy=full
        )
        loss, metrics = policy_loss(
            logp,
            logp.detach() if old is None else old,
            advantages,
            mask,
            global_denominator=denominator,
            rollout_logp_BT=extra.get("rollout"),
            ref_logp_BT=extra.get("ref"),
            entropy_BT=entropy,
            **options,
        )
    loss.backward()
    return {
        "loss": loss.detach(),
        "metrics": metrics,
        "logp": logp.detach(),
        "entropy": None if entropy is None else entropy.detach(),
        "grad_hidden": hidden.grad,
        "grad_weight": weight.grad,
    }


def assert_same(got: dict[str, Any], want: dict[str, Any], atol: float = 1e-10) -> None:
    for key in ("loss", "logp", "entropy", "grad_hidden", "grad_weight"):
        if want[key] is None:
            assert got[key] is None, key
        else:
            torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0, msg=key)
    assert got["metrics"].keys() == want["metrics"].keys()
    for key, value in want["metrics"].items():
        assert got["metrics"][key] == pytest.approx(value, rel=1e-6, abs=max(atol, 1e-8)), key


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 13, 1000])  # per token, < a row, 2 rows (not dividing 7), all
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_matches_unfused(
    aggregation: str, chunk_size: int, full: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Log-softmax temporaries of two rows at most: a chunk's statistics are taken over several blocks.
    monkeypatch.setattr("dapo.algo.fused._TEMPORARY_ELEMENTS", 25)
    case = make_case(seed=2)  # a seed whose batch hits every clip branch
    want = run(case, fused=False, full=full, aggregation=aggregation, chunk_size=chunk_size)
    got = run(case, fused=True, full=full, aggregation=aggregation, chunk_size=chunk_size)
    assert_same(got, want)
    assert float(got["loss"]) != 0.0
    if full:  # the options are exercised, not just passed
        metrics = combine_metrics([got["metrics"]])
        assert metrics["clip_high_fraction"] > 0 and metrics["clip_low_fraction"] > 0
        assert 0 < metrics["tis_truncated_fraction"] < 1
        assert metrics["dual_clip_fraction"] > 0
    else:
        assert got["metrics"]["ratio_max"] == 1.0


@pytest.mark.parametrize("chunk_size", [2, 6, 100])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_sum_to_the_whole_batch(aggregation: str, chunk_size: int) -> None:
    case = make_case(seed=7)
    whole = run(case, fused=True, full=True, aggregation=aggregation, chunk_size=chunk_size)
    micro_batches = [slice(0, 2), slice(2, 3), slice(3, 7)]
    denominator = sum(loss_denominator(case["mask"][rows], aggregation) for rows in micro_batches)  # type: ignore[arg-type]
    parts = [
        run(
            case,
            fused=True,
            full=True,
            aggregation=aggregation,
            chunk_size=chunk_size,
            rows=rows,
            denominator=denominator,
        )
        for rows in micro_batches
    ]
    torch.testing.assert_close(sum(p["loss"] for p in parts), whole["loss"], atol=1e-10, rtol=0)
    torch.testing.assert_close(
        torch.cat([p["grad_hidden"] for p in parts]), whole["grad_hidden"], atol=1e-10, rtol=0
    )
    torch.testing.assert_close(sum(p["grad_weight"] for p in parts), whole["grad_weight"], atol=1e-10, rtol=0)
    combined, expected = combine_metrics([p["metrics"] for p in parts]), combine_metrics([whole["metrics"]])
    assert combined.keys() == expected.keys()
    for key, value in expected.items():
        assert combined[key] == pytest.approx(value, abs=1e-9), key


@settings(max_examples=20, deadline=None)
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 6),
    width=st.integers(1, 4),
    vocab=st.integers(1, 12),
    chunk_size=st.integers(1, 20),
    aggregation=st.sampled_from(AGGREGATIONS),
    full=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_unfused(batch, length, width, vocab, chunk_size, aggregation, full, seed) -> None:  # type: ignore[no-untyped-def]
    case = make_case(seed, batch, length, width, vocab)
    want = run(case, fused=False, full=full, aggregation=aggregation, chunk_size=chunk_size)
    got = run(case, fused=True, full=full, aggregation=aggregation, chunk_size=chunk_size)
    assert_same(got, want)


def test_float32_close_to_unfused() -> None:
    case = make_case(seed=3, batch=4, length=9, width=16, vocab=50, dtype=torch.float32)
    want = run(case, fused=False, full=True, aggregation="token-mean", chunk_size=5)
    got = run(case, fused=True, full=True, aggregation="token-mean", chunk_size=5)
    assert got["loss"].dtype == torch.float32 and got["grad_weight"].dtype == torch.float32
    assert_same(got, want, atol=1e-5)


def _inputs(case: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return case["hidden"], case["weight"], case["targets"], case["old"], case["advantages"], case["mask"]


def _addmm_flop(self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, **kwargs: Any) -> int:
    return mm_flop(a_shape, b_shape)


def test_three_matmuls_instead_of_four() -> None:
    case = make_case(seed=4, batch=4, length=8, width=16, vocab=64)
    hidden, weight, targets, old, advantages, mask = _inputs(case)
    tokens, width, vocab = targets.numel(), hidden.shape[-1], weight.shape[0]
    one_matmul = 2 * tokens * width * vocab

    def flops(fused: bool) -> int:
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        # In-place addmm_ (the weight gradient's accumulation) is not in the default flop table.
        with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flop}) as counter:
            if fused:
                loss = fused_policy_loss(
                    h, w, targets, old, advantages, mask, global_denominator=5, chunk_size=8, **CLIPS
                )[0]
            else:
                logp, _ = token_logprobs(h, w, targets, chunk_size=8)
                loss = policy_loss(logp, old, advantages, mask, global_denominator=5, **CLIPS)[0]
            loss.backward()
        return int(counter.get_total_flops())

    assert flops(fused=False) == 4 * one_matmul
    assert flops(fused=True) == 3 * one_matmul


def test_frozen_inputs_no_grad_and_gradient_scaling() -> None:
    case = make_case(seed=5)
    hidden, weight, targets, old, advantages, mask = _inputs(case)
    kwargs: dict[str, Any] = {"global_denominator": 9, "chunk_size": 6, **CLIPS}
    reference = fused_policy_loss(hidden, weight, targets, old, advantages, mask, **kwargs)
    assert not reference[0].requires_grad  # neither input requires grad: matmuls 2 and 3 skipped
    with torch.no_grad():
        no_grad = fused_policy_loss(hidden.requires_grad_(), weight, targets, old, advantages, mask, **kwargs)
    assert not no_grad[0].requires_grad and no_grad[1] == reference[1]
    torch.testing.assert_close(no_grad[0], reference[0], atol=0, rtol=0)

    # Only hidden requires grad (a frozen lm head); backward of 2 * loss doubles the gradient.
    loss, _, _, _ = fused_policy_loss(hidden, weight, targets, old, advantages, mask, **kwargs)
    (2 * loss).backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    logp, _ = token_logprobs(ref_hidden, weight, targets)
    ref_loss, _ = policy_loss(logp, old, advantages, mask, global_denominator=9, **CLIPS)
    (2 * ref_loss).backward()
    assert hidden.grad is not None and ref_hidden.grad is not None
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, atol=1e-10, rtol=0)


def test_backward_twice_raises() -> None:
    case = make_case(seed=6)
    hidden, weight, targets, old, advantages, mask = _inputs(case)
    loss, _, _, _ = fused_policy_loss(
        hidden.requires_grad_(), weight, targets, old, advantages, mask, global_denominator=3, **CLIPS
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward was already called"):
        loss.backward()


def _call(**overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "hidden_BRH": torch.zeros(2, 3, 4),
        "lm_head_weight_VH": torch.zeros(5, 4),
        "targets_BR": torch.zeros(2, 3, dtype=torch.int64),
        "old_logp_BR": None,
        "advantages_B": torch.zeros(2),
        "mask_BR": torch.ones(2, 3, dtype=torch.bool),
        "global_denominator": 6,
        **CLIPS,
    }
    arguments.update(overrides)
    fused_policy_loss(**arguments)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden_BRH": torch.zeros(6, 4)}, r"hidden_BRH must be a floating-point \(B, R, H\) tensor"),
        ({"hidden_BRH": torch.zeros(2, 3, 4, dtype=torch.int64)}, "hidden_BRH must be a floating-point"),
        (
            {"hidden_BRH": torch.zeros(0, 3, 4), "targets_BR": torch.zeros(0, 3, dtype=torch.int64)},
            "hidden_BRH is empty",
        ),
        ({"lm_head_weight_VH": torch.zeros(5, 3)}, r"lm_head_weight_VH must be \(V, 4\)"),
        (
            {"lm_head_weight_VH": torch.zeros(5, 4, dtype=torch.float64)},
            "lm_head_weight_VH must have hidden_BRH's dtype",
        ),
        (
            {"targets_BR": torch.zeros(2, 4, dtype=torch.int64)},
            r"targets_BR must be integer token ids of shape \(2, 3\)",
        ),
        ({"targets_BR": torch.zeros(2, 3)}, "targets_BR must be integer token ids"),
        ({"targets_BR": torch.full((2, 3), 5)}, r"targets_BR must be token ids in \[0, 5\)"),
        ({"old_logp_BR": torch.zeros(2, 4)}, r"old_logp_BR must have shape \(2, 3\)"),
        ({"advantages_B": torch.zeros(3)}, r"advantages_B must have shape \(2, 3\) or \(2,\)"),
        ({"mask_BR": torch.ones(3, 2, dtype=torch.bool)}, r"mask_BR must have shape \(2, 3\)"),
        ({"rollout_logp_BR": torch.zeros(2)}, "rollout_logp_BR must have shape"),
        ({"ref_logp_BR": torch.zeros(1, 3)}, "ref_logp_BR must have shape"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1"),
        ({"chunk_size": 2.0}, "chunk_size must be an int >= 1"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"aggregation": "mean"}, "aggregation must be one of"),
        ({"global_denominator": 0}, "global_denominator must be > 0"),
        ({"tis_cap": 2.0}, "tis_cap is set but rollout_logp_BR is None"),
    ],
)
def test_bad_input_names_the_argument(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _call(**overrides)

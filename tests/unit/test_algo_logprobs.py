"""Chunked token log-probs and entropy equal the straightforward computation, values and gradients."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dapo.algo import token_logprobs


def naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):  # type: ignore[no-untyped-def]
    """log_softmax over the whole [tokens, vocab] matrix, then gather (what TRL and verl do)."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32)) / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def compare(
    shape: tuple[int, ...],
    vocab: int,
    chunk_size: int,
    temperature: float,
    with_entropy: bool,
    dtype: torch.dtype,
    atol: float,
    seed: int = 0,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    *lead, hidden_size = shape
    hidden = torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_()
    # Scaled like a trained lm head (logits of order 1), so float32 rounding stays near 1e-6.
    weight = (
        torch.randn(vocab, hidden_size, generator=generator, dtype=dtype) * hidden_size**-0.5
    ).requires_grad_()
    targets = torch.randint(0, vocab, tuple(lead), generator=generator)
    grad_logp = torch.randn(tuple(lead), generator=generator, dtype=dtype)
    grad_entropy = torch.randn(tuple(lead), generator=generator, dtype=dtype)

    logp, entropy = token_logprobs(
        hidden, weight, targets, chunk_size=chunk_size, temperature=temperature, with_entropy=with_entropy
    )
    ref_logp, ref_entropy = naive(hidden, weight, targets, temperature)
    torch.testing.assert_close(logp, ref_logp, atol=atol, rtol=0)
    objective = (logp * grad_logp).sum()
    ref_objective = (ref_logp * grad_logp).sum()
    if with_entropy:
        assert entropy is not None
        torch.testing.assert_close(entropy, ref_entropy, atol=atol, rtol=0)
        objective = objective + (entropy * grad_entropy).sum()
        ref_objective = ref_objective + (ref_entropy * grad_entropy).sum()
    else:
        assert entropy is None
    grads = torch.autograd.grad(objective, (hidden, weight))
    ref_grads = torch.autograd.grad(ref_objective, (hidden, weight))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


@pytest.mark.parametrize("with_entropy", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_matches_naive_float32(chunk_size: int, with_entropy: bool) -> None:
    compare(
        (37, 16),
        vocab=50,
        chunk_size=chunk_size,
        temperature=1.0,
        with_entropy=with_entropy,
        dtype=torch.float32,
        atol=1e-5,
    )


def test_batched_inputs_and_temperature_float64() -> None:
    compare(
        (3, 5, 8), vocab=40, chunk_size=4, temperature=0.7, with_entropy=True, dtype=torch.float64, atol=1e-10
    )


@settings(max_examples=25, deadline=None)
@given(
    num_tokens=st.integers(1, 20),
    hidden_size=st.integers(1, 8),
    vocab=st.integers(1, 30),
    chunk_size=st.integers(1, 25),
    temperature=st.sampled_from([0.5, 1.0, 1.7]),
    with_entropy=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_naive(
    num_tokens, hidden_size, vocab, chunk_size, temperature, with_entropy, seed
) -> None:  # type: ignore[no-untyped-def]
    compare(
        (num_tokens, hidden_size), vocab, chunk_size, temperature, with_entropy, torch.float64, 1e-10, seed
    )


def test_gradcheck_float64() -> None:
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (5,), generator=generator)

    def fn(h: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp, entropy = token_logprobs(h, w, targets, chunk_size=2, temperature=1.3, with_entropy=True)
        assert entropy is not None
        return logp, entropy

    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_frozen_weight_and_entropy_only_gradient() -> None:
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(6, 4, generator=generator, requires_grad=True)
    weight = torch.randn(9, 4, generator=generator)  # frozen lm head
    targets = torch.randint(0, 9, (6,), generator=generator)
    _, entropy = token_logprobs(hidden, weight, targets, chunk_size=4, with_entropy=True)
    assert entropy is not None
    entropy.sum().backward()
    ref_hidden = hidden.detach().clone().requires_grad_()
    naive(ref_hidden, weight, targets)[1].sum().backward()
    assert hidden.grad is not None and ref_hidden.grad is not None
    torch.testing.assert_close(hidden.grad, ref_hidden.grad, atol=1e-5, rtol=0)


def _call(**overrides: Any) -> None:
    arguments: dict[str, Any] = {
        "hidden": torch.zeros(4, 3),
        "lm_head_weight_VH": torch.zeros(5, 3),
        "targets": torch.zeros(4, dtype=torch.int64),
    }
    options = {key: overrides.pop(key) for key in list(overrides) if key in ("chunk_size", "temperature")}
    arguments.update(overrides)
    token_logprobs(arguments["hidden"], arguments["lm_head_weight_VH"], arguments["targets"], **options)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hidden": torch.zeros(3)}, r"hidden must be \(T, H\) or \(B, T, H\)"),
        ({"hidden": torch.zeros(4, 3, dtype=torch.int64)}, "hidden must be a floating-point tensor"),
        ({"lm_head_weight_VH": torch.zeros(5, 2)}, r"lm_head_weight_VH must be \(V, H\) with H = 3"),
        (
            {"lm_head_weight_VH": torch.zeros(5, 3, dtype=torch.float64)},
            "lm_head_weight_VH must match hidden's dtype",
        ),
        ({"targets": torch.zeros(3, dtype=torch.int64)}, r"targets must have shape \(4,\)"),
        ({"targets": torch.zeros(4)}, "targets must be integer token ids"),
        ({"targets": torch.tensor([0, 1, 5, 0])}, r"targets must be token ids in \[0, 5\)"),
        ({"targets": torch.tensor([0, -1, 2, 0])}, r"targets must be token ids in \[0, 5\)"),
        ({"hidden": torch.zeros(0, 3), "targets": torch.zeros(0, dtype=torch.int64)}, "hidden is empty"),
        ({"chunk_size": 0}, "chunk_size must be an int >= 1"),
        ({"chunk_size": 2.5}, "chunk_size must be an int >= 1"),
        ({"temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_bad_input_names_the_argument(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _call(**overrides)


def test_float32_error_no_worse_than_naive_with_large_logits() -> None:
    """Against a float64 truth, chunked float32 values and gradients are as accurate as the naive way
    even when logits are large (entropy computed from log p, not as the cancelling lse - E[z])."""
    generator = torch.Generator().manual_seed(5)
    hidden64 = torch.randn(64, 32, generator=generator, dtype=torch.float64) * 3
    weight64 = torch.randn(300, 32, generator=generator, dtype=torch.float64)  # logits of std ~17
    targets = torch.randint(0, 300, (64,), generator=generator)
    grad_logp, grad_entropy = torch.randn(2, 64, generator=generator, dtype=torch.float64)

    def run(chunked: bool, dtype: torch.dtype) -> list[torch.Tensor]:
        hidden = hidden64.to(dtype).requires_grad_()
        weight = weight64.to(dtype).requires_grad_()
        if chunked:
            logp, entropy = token_logprobs(hidden, weight, targets, chunk_size=16, with_entropy=True)
            assert entropy is not None
        else:
            logp, entropy = naive(hidden, weight, targets)
        objective = (logp.double() * grad_logp + entropy.double() * grad_entropy).sum()
        return [
            t.detach().double() for t in (logp, entropy, *torch.autograd.grad(objective, (hidden, weight)))
        ]

    truth = run(False, torch.float64)
    naive_errors = [
        (got - want).abs().max() for got, want in zip(run(False, torch.float32), truth, strict=True)
    ]
    chunked_errors = [
        (got - want).abs().max() for got, want in zip(run(True, torch.float32), truth, strict=True)
    ]
    names = ["logp", "entropy", "d/dh", "d/dW"]
    for name, chunked_error, naive_error, want in zip(
        names, chunked_errors, naive_errors, truth, strict=True
    ):
        # Within 4x of the naive float32 error, or 1e-5 relative to the largest value (summing chunks
        # in a different order rounds differently; the cancelling entropy formula was 100x off).
        bound = max(4 * float(naive_error), 1e-5 * float(want.abs().max()))
        assert chunked_error <= bound, (name, float(chunked_error), float(naive_error))


def test_bfloat16_inputs_close_to_naive() -> None:
    generator = torch.Generator().manual_seed(6)
    hidden = torch.randn(24, 16, generator=generator).to(torch.bfloat16).requires_grad_()
    weight = (torch.randn(40, 16, generator=generator) * 0.25).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 40, (24,), generator=generator)
    logp, _ = token_logprobs(hidden, weight, targets, chunk_size=5)
    assert logp.dtype == torch.float32
    grads = torch.autograd.grad(logp.sum(), (hidden, weight))
    ref_logp, _ = naive(hidden, weight, targets)
    ref_grads = torch.autograd.grad(ref_logp.sum(), (hidden, weight))
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)  # same bf16 logits, float32 after
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)

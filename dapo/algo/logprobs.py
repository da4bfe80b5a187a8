"""Token log-probs (and entropies) from the last hidden states, in chunks over tokens.

For tokens t with hidden state h_t, target y_t and temperature tau:

    z_t      = (W h_t) / tau                         # logits, computed in float32
    logp_t   = z_t[y_t] - logsumexp(z_t)
    H_t      = -sum_j p_tj log p_tj                   # entropy of p_t = softmax(z_t)

The straightforward way (`log_softmax(hidden @ W.T).gather(...)`, as TRL and verl do) materialises
the float32 [tokens, vocab] logits, their log-softmax and their gradient: 2.5 GB each for 4,096
tokens of a 151,936-word vocabulary. Here a custom autograd function handles `chunk_size` tokens at
a time, keeping only (T,) float32 logsumexps (and entropies) between forward and backward, and
recomputes each chunk's logits in backward to form the exact gradients:

    d logp_t / d z_t = onehot(y_t) - p_t
    d H_t / d z_t    = -p_t * (log p_t + H_t)

then d/dh = (dz / tau) @ W and d/dW = (dz / tau)^T @ h, accumulated chunk by chunk. The price is one
extra [tokens x hidden x vocab] matmul (the recompute): four instead of three.

Temperature divides the logits, as the behaviour policy samples at temperature (the rollout
engine's processed log-probs are those of softmax(z / tau)).
"""

from __future__ import annotations

from typing import Any

import torch


def chunk_logits(hidden_CH: torch.Tensor, weight_VH: torch.Tensor, temperature: float) -> torch.Tensor:
    # float32 at least (float64 stays float64): bf16 logits would lose the log-prob precision.
    logits_CV = (hidden_CH @ weight_VH.T).to(torch.promote_types(hidden_CH.dtype, torch.float32))
    if temperature != 1.0:
        logits_CV.div_(temperature)
    return logits_CV


class _ChunkedTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        targets_T: torch.Tensor,
        chunk_size: int,
        temperature: float,
        with_entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = hidden_TH.shape[0]
        device = hidden_TH.device
        dtype = torch.promote_types(hidden_TH.dtype, torch.float32)
        logp_T = torch.empty(num_tokens, dtype=dtype, device=device)
        lse_T = torch.empty(num_tokens, dtype=dtype, device=device)
        entropy_T = torch.empty(num_tokens if with_entropy else 0, dtype=dtype, device=device)
        for start in range(0, num_tokens, chunk_size):
            end = min(start + chunk_size, num_tokens)
            logits_CV = chunk_logits(hidden_TH[start:end], weight_VH, temperature)
            lse_C = torch.logsumexp(logits_CV, dim=-1)
            lse_T[start:end] = lse_C
            # log p = z - logsumexp(z), in place; entropy from log p (not lse - E[z], which cancels badly
            # in float32 when logits are large).
            logp_CV = logits_CV.sub_(lse_C[:, None])
            logp_T[start:end] = logp_CV.gather(1, targets_T[start:end, None]).squeeze(1)
            if with_entropy:
                entropy_T[start:end] = -torch.linalg.vecdot(torch.exp(logp_CV), logp_CV)
            del logits_CV, logp_CV
        ctx.save_for_backward(hidden_TH, weight_VH, targets_T, lse_T, entropy_T)
        ctx.chunk_size = chunk_size
        ctx.temperature = temperature
        ctx.with_entropy = with_entropy
        ctx.set_materialize_grads(False)
        return logp_T, entropy_T

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_logp_T: torch.Tensor | None, grad_entropy_T: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        hidden_TH, weight_VH, targets_T, lse_T, entropy_T = ctx.saved_tensors
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not ctx.with_entropy:
            grad_entropy_T = None
        if (grad_logp_T is None and grad_entropy_T is None) or not (needs_hidden or needs_weight):
            return None, None, None, None, None, None
        temperature = ctx.temperature
        num_tokens = hidden_TH.shape[0]
        grad_hidden_TH = torch.empty_like(hidden_TH) if needs_hidden else None
        grad_weight_VH = None
        if needs_weight:
            # Accumulate in float32 even for bf16 weights, so chunking does not add rounding.
            accumulate_dtype = torch.promote_types(weight_VH.dtype, torch.float32)
            grad_weight_VH = torch.zeros(weight_VH.shape, dtype=accumulate_dtype, device=weight_VH.device)
        for start in range(0, num_tokens, ctx.chunk_size):
            end = min(start + ctx.chunk_size, num_tokens)
            hidden_CH = hidden_TH[start:end]
            logits_CV = chunk_logits(hidden_CH, weight_VH, temperature)
            logp_CV = logits_CV.sub_(lse_T[start:end, None])  # log p, in place
            if grad_entropy_T is not None:
                probs_CV = torch.exp(logp_CV)
                # dH/dz = -p (z - E_p[z]) = -p (log p + H); built in place in the log p buffer.
                grad_z_CV = logp_CV.add_(entropy_T[start:end, None]).mul_(probs_CV)
                grad_z_CV.mul_(-grad_entropy_T[start:end, None] / temperature)
                if grad_logp_T is not None:
                    g_C = grad_logp_T[start:end] / temperature
                    grad_z_CV.sub_(probs_CV.mul_(g_C[:, None]))
                    grad_z_CV.scatter_add_(1, targets_T[start:end, None], g_C[:, None])
                del probs_CV
            else:
                assert grad_logp_T is not None
                g_C = grad_logp_T[start:end] / temperature
                # d logp/dz = onehot - p, times the incoming gradient; in place: p = exp(log p).
                grad_z_CV = logp_CV.exp_().mul_(-g_C[:, None])
                grad_z_CV.scatter_add_(1, targets_T[start:end, None], g_C[:, None])
            grad_z_CV = grad_z_CV.to(weight_VH.dtype)
            if grad_hidden_TH is not None:
                grad_hidden_TH[start:end] = grad_z_CV @ weight_VH
            if grad_weight_VH is not None:
                if grad_weight_VH.dtype == weight_VH.dtype:
                    grad_weight_VH.addmm_(grad_z_CV.T, hidden_CH)
                else:
                    # bf16/fp16: the matmul runs in the low precision (as the naive backward does), its
                    # result is summed over chunks in float32.
                    grad_weight_VH.add_(grad_z_CV.T @ hidden_CH)
            del logits_CV, logp_CV, grad_z_CV
        if grad_weight_VH is not None:
            grad_weight_VH = grad_weight_VH.to(weight_VH.dtype)
        return grad_hidden_TH, grad_weight_VH, None, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight_VH: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (float32, or float64 for float64 inputs) of `targets` (and entropies if asked), chunked over tokens, exact gradients.

    hidden: (T, H) or (B, T, H) final hidden states (after the final norm), any float dtype.
    lm_head_weight_VH: (V, H) output projection (no bias), same dtype and device as `hidden`.
    targets: (T,) or (B, T) int64 token ids in [0, V), matching `hidden`'s leading shape.
    Returns logp and entropy with `targets`' shape (entropy None unless `with_entropy`).
    Gradients flow to `hidden` and `lm_head_weight_VH` through both outputs.
    """
    if hidden.ndim not in (2, 3):
        raise ValueError(f"hidden must be (T, H) or (B, T, H), got shape {tuple(hidden.shape)}")
    if not hidden.is_floating_point():
        raise ValueError(f"hidden must be a floating-point tensor, got dtype {hidden.dtype}")
    if lm_head_weight_VH.ndim != 2 or lm_head_weight_VH.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"lm_head_weight_VH must be (V, H) with H = {hidden.shape[-1]} (hidden's last dim), "
            f"got shape {tuple(lm_head_weight_VH.shape)}"
        )
    if lm_head_weight_VH.dtype != hidden.dtype or lm_head_weight_VH.device != hidden.device:
        raise ValueError(
            f"lm_head_weight_VH must match hidden's dtype and device ({hidden.dtype}, {hidden.device}), "
            f"got ({lm_head_weight_VH.dtype}, {lm_head_weight_VH.device})"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets must have shape {tuple(hidden.shape[:-1])} (hidden without its last dim), "
            f"got {tuple(targets.shape)}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"targets must be integer token ids, got dtype {targets.dtype}")
    if hidden.shape[:-1].numel() == 0:
        raise ValueError(f"hidden is empty (shape {tuple(hidden.shape)}): expected at least one token")
    vocab_size = lm_head_weight_VH.shape[0]
    if int(targets.min()) < 0 or int(targets.max()) >= vocab_size:
        raise ValueError(
            f"targets must be token ids in [0, {vocab_size}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    hidden_TH = hidden.reshape(-1, hidden.shape[-1])
    targets_T = targets.reshape(-1).to(torch.int64)
    logp_T, entropy_T = _ChunkedTokenLogprobs.apply(
        hidden_TH, lm_head_weight_VH, targets_T, chunk_size, float(temperature), with_entropy
    )
    logp = logp_T.reshape(targets.shape)
    entropy = entropy_T.reshape(targets.shape) if with_entropy else None
    return logp, entropy

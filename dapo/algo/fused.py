"""DAPO's policy loss fused with the chunked token log-probs: three [T x H x V] matmuls instead of four.

For a (B, R) batch of response tokens with hidden states h_t, targets y_t and temperature tau, this
computes what `token_logprobs` + `policy_loss` + backward compute (DAPO eq. 8, the token-level clipped
objective with clip-higher, eq. 10; see `dapo.algo.loss` for the options and aggregation modes):

    z_t = (W h_t) / tau,   logp_t = z_t[y_t] - logsumexp(z_t)              # dapo.algo.logprobs
    L   = sum_t w_t l_t(logp_t) / global_denominator                       # dapo.algo.loss

and returns the loss, its raw (summable) metrics, logp and the entropies.

Why three matmuls: `token_logprobs` keeps only logsumexps between forward and backward and
recomputes each chunk's logits in backward (forward logits, recompute, d/dh, d/dW: four
[T x H x V] matmuls; the full-matrix way needs three but holds several [T, V] buffers). Here the
loss itself is evaluated chunk by chunk during the forward pass. That is exact because the loss is
separable by rows once `global_denominator` is fixed: every aggregation mode divides by that
constant, a token's loss depends only on its own log-prob, and the per-row factors (a row's token
count, L_max) come from the mask. So while a chunk's logits are still in memory, `policy_loss` on
the chunk's rows (on a detached leaf copy of its log-probs) gives dL/dlogp_t, and

    dL/dz_t = dL/dlogp_t * (onehot(y_t) - softmax(z_t)) / tau

is formed in place in the chunk's logits buffer, then d/dh = dz @ W and d/dW += dz^T @ h (the weight
gradient summed over chunks in float32 at least). Those gradients are kept, and the backward only
multiplies them by the incoming gradient: logits once, gradients twice, no recompute.

Chunks: `chunk_size` tokens' worth of whole rows (at least one row) when a row has at most
`chunk_size` tokens; otherwise each row is cut into pieces of `chunk_size` tokens, and a piece's
loss under "seq-mean-token-mean" is scaled by its whole row's token count (not the piece's). The
metrics of the chunks are merged as `combine_metrics` would (sums added, maxima maxed), giving the raw
dict `policy_loss` gives for the whole batch; pass it to `combine_metrics` with other micro-batches'.
Working memory besides the two gradients: one [chunk, V] float32 logits buffer (the gradient is built
in it) and a log-softmax temporary of at most 2**24 elements.

Limits:
- Only a loss separable by rows given the global denominator fits (all of `policy_loss`'s modes do).
  The gradient reaches hidden and W only through the loss: logp and entropy come back detached, so an
  objective on them (an entropy bonus, say) needs `token_logprobs` instead.
- The gradient is formed in the forward pass, whether or not backward is called (under no_grad, or
  when neither hidden nor W requires grad, matmuls 2 and 3 are skipped), and it is held until
  backward: (B, R, H) for hidden and (V, H) for W.
- Backward scales the stored gradients in place and frees them: calling it twice (retain_graph) is
  not supported and raises. Higher-order gradients are not supported.
- Each chunk calls `policy_loss`, which reads its metrics back to the host (a device sync per chunk).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from dapo.algo.logprobs import _chunk_logits
from dapo.algo.loss import _COMBINE, _check_aggregation, _check_mask, loss_denominator, policy_loss

# policy_loss arguments that are per-token tensors: fused_policy_loss takes them under its own names
# (and slices them per chunk), never through **policy_loss_options.
_TENSOR_OPTIONS = {
    "rollout_logp_BT": "rollout_logp_BR",
    "ref_logp_BT": "ref_logp_BR",
    "entropy_BT": "with_entropy",
}

_TOKEN_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
# Largest temporary (elements) of the per-chunk log-softmax: 64 MiB in float32.
_TEMPORARY_ELEMENTS = 1 << 24


class _GradientFromForward(torch.autograd.Function):
    """Returns `loss`; its backward hands back the gradients formed in forward, times grad_output."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        loss: torch.Tensor,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        grad_hidden: torch.Tensor | None,
        grad_weight: torch.Tensor | None,
    ) -> torch.Tensor:
        ctx.grads = (grad_hidden, grad_weight)
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError(
                "fused_policy_loss: backward was already called on this loss; its gradients are formed "
                "once in forward and released by the first backward (retain_graph is not supported)"
            )
        grads = [g.mul_(grad_loss.to(g.dtype)) if g is not None else None for g in ctx.grads]
        ctx.grads = None
        return None, grads[0], grads[1], None, None


def _check_inputs(
    hidden_BRH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_BR: torch.Tensor,
    row_tensors: Mapping[str, torch.Tensor | None],
    chunk_size: int,
    temperature: float,
    options: Mapping[str, Any],
) -> None:
    if hidden_BRH.ndim != 3 or not hidden_BRH.is_floating_point():
        raise ValueError(
            f"hidden_BRH must be a floating-point (B, R, H) tensor, got shape {tuple(hidden_BRH.shape)} "
            f"and dtype {hidden_BRH.dtype}"
        )
    batch, length, width = hidden_BRH.shape
    if batch * length == 0:
        raise ValueError(
            f"hidden_BRH is empty (shape {tuple(hidden_BRH.shape)}): expected at least one token"
        )
    if tuple(weight_VH.shape[1:]) != (width,) or weight_VH.shape[0] < 1:
        raise ValueError(f"lm_head_weight_VH must be (V, {width}), got shape {tuple(weight_VH.shape)}")
    if (weight_VH.dtype, weight_VH.device) != (hidden_BRH.dtype, hidden_BRH.device):
        raise ValueError(
            f"lm_head_weight_VH must have hidden_BRH's dtype and device ({hidden_BRH.dtype}, "
            f"{hidden_BRH.device}), got ({weight_VH.dtype}, {weight_VH.device})"
        )
    if tuple(targets_BR.shape) != (batch, length) or targets_BR.dtype not in _TOKEN_DTYPES:
        raise ValueError(
            f"targets_BR must be integer token ids of shape {(batch, length)}, got shape "
            f"{tuple(targets_BR.shape)} and dtype {targets_BR.dtype}"
        )
    low, high = (int(v) for v in torch.stack([targets_BR.min(), targets_BR.max()]).tolist())
    if low < 0 or high >= weight_VH.shape[0]:
        raise ValueError(f"targets_BR must be token ids in [0, {weight_VH.shape[0]}), got [{low}, {high}]")
    for name, tensor in row_tensors.items():
        allowed = [(batch, length), (batch,)] if name == "advantages_B" else [(batch, length)]
        if tensor is not None and tuple(tensor.shape) not in allowed:
            wanted = " or ".join(str(shape) for shape in allowed)
            raise ValueError(f"{name} must have shape {wanted}, got {tuple(tensor.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    for key, replacement in _TENSOR_OPTIONS.items():
        if key in options:
            raise ValueError(f"{key} is not a fused_policy_loss option: pass {replacement} instead")
    _check_aggregation(str(options.get("aggregation", "token-mean")))
    if options.get("tis_cap") is not None and row_tensors["rollout_logp_BR"] is None:
        raise ValueError("tis_cap is set but rollout_logp_BR is None: TIS needs the rollout log-probs")
    if options.get("kl_coef", 0.0) > 0 and row_tensors["ref_logp_BR"] is None:
        raise ValueError("kl_coef > 0 needs ref_logp_BR (the reference policy's log-probs)")


def _chunks(batch: int, length: int, chunk_size: int) -> list[tuple[slice, slice]]:
    """(rows, columns) of each chunk: whole rows if a row fits in a chunk, else pieces of one row."""
    if length <= chunk_size:
        step = chunk_size // length
        return [(slice(b, min(b + step, batch)), slice(0, length)) for b in range(0, batch, step)]
    return [
        (slice(b, b + 1), slice(c, min(c + chunk_size, length)))
        for b in range(batch)
        for c in range(0, length, chunk_size)
    ]


def _piece(tensor: torch.Tensor, rows: slice, columns: slice) -> torch.Tensor:
    return tensor[rows] if tensor.ndim == 1 else tensor[rows, columns]


def _merge_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """The chunks' raw metrics as one raw dict: sums and counts added, maxima maxed."""
    merged: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            if key in merged and _COMBINE.get(key, ("", "sum"))[1] == "max":
                merged[key] = max(merged[key], value)
            else:
                merged[key] = merged.get(key, 0.0) + value
    return merged


def _chunk_forward(
    hidden_CH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_C: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The chunk's [C, V] log-softmax (a buffer for `_chunk_gradients` to reuse), logp and entropy.

    logsumexp and exp need a temporary the size of their input: taken over a few rows at a time, so
    that with the weight gradient already allocated the chunk costs one [C, V] buffer, not two."""
    with torch.no_grad():
        logits_CV = _chunk_logits(hidden_CH, weight_VH, temperature)  # matmul 1
        entropy_C = torch.empty(
            logits_CV.shape[0] if with_entropy else 0, dtype=logits_CV.dtype, device=logits_CV.device
        )
        step = max(1, _TEMPORARY_ELEMENTS // logits_CV.shape[1])
        for start in range(0, logits_CV.shape[0], step):
            block = logits_CV[start : start + step]
            block.sub_(torch.logsumexp(block, dim=-1, keepdim=True))  # log p, in place
            if with_entropy:
                entropy_C[start : start + step] = -torch.linalg.vecdot(torch.exp(block), block)
        logp_C = logits_CV.gather(1, targets_C[:, None]).squeeze(1)
    return logits_CV, logp_C, entropy_C if with_entropy else None


def _chunk_gradients(
    logp_CV: torch.Tensor,
    g_C: torch.Tensor,
    targets_C: torch.Tensor,
    hidden_CH: torch.Tensor,
    weight_VH: torch.Tensor,
    grad_hidden_CH: torch.Tensor | None,
    grad_weight_VH: torch.Tensor | None,
) -> None:
    """Writes g (onehot - p) @ W into grad_hidden_CH and adds its transpose times h to grad_weight_VH,
    with g = dL/dlogp / tau; overwrites logp_CV."""
    with torch.no_grad():
        # dL/dz = g (onehot - p), in place in the log p buffer: p = exp(log p).
        grad_z_CV = logp_CV.exp_().mul_(-g_C[:, None])
        grad_z_CV.scatter_add_(1, targets_C[:, None], g_C[:, None])
        grad_z_CV = grad_z_CV.to(weight_VH.dtype)
        if grad_hidden_CH is not None:
            grad_hidden_CH.copy_(grad_z_CV @ weight_VH)  # matmul 2
        if grad_weight_VH is None:
            return
        if grad_weight_VH.dtype == weight_VH.dtype:  # matmul 3
            grad_weight_VH.addmm_(grad_z_CV.T, hidden_CH)
        else:
            # bf16/fp16: the matmul in the low precision, its result summed over chunks in float32.
            grad_weight_VH.add_(grad_z_CV.T @ hidden_CH)


def fused_policy_loss(
    hidden_BRH: torch.Tensor,
    lm_head_weight_VH: torch.Tensor,
    targets_BR: torch.Tensor,
    old_logp_BR: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_BR: torch.Tensor,
    *,
    global_denominator: float | int | torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
    rollout_logp_BR: torch.Tensor | None = None,
    ref_logp_BR: torch.Tensor | None = None,
    **policy_loss_options: Any,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]:
    """`policy_loss(token_logprobs(...))` with its gradient formed in the forward pass (see module docstring).

    hidden_BRH: (B, R, H) hidden states predicting the response tokens (after the final norm).
    lm_head_weight_VH: (V, H) output projection, same dtype and device as hidden_BRH.
    targets_BR: (B, R) int token ids in [0, V).
    old_logp_BR: (B, R) log-probs before this optimizer step, or None for the current ones (ratio 1,
        as with one optimizer step per batch).
    advantages_B: (B,) or (B, R). mask_BR: (B, R) bool or 0/1, the tokens in the loss.
    global_denominator, rollout_logp_BR (policy_loss's rollout_logp_BT), ref_logp_BR (its ref_logp_BT)
        and **policy_loss_options (ratio_clip_min, ratio_clip_max, ratio_clip_c, tis_cap, kl_coef,
        aggregation, max_response_length, log_ratio_clamp) are as in `policy_loss`.
    Returns (loss, metrics, logp_BR, entropy_BR): the loss (a scalar whose backward gives hidden_BRH and
    lm_head_weight_VH their gradients), `policy_loss`'s raw metrics for the whole batch, and the
    detached float32 (float64 for float64 inputs) log-probs and entropies (None unless with_entropy).
    """
    row_tensors = {
        "old_logp_BR": old_logp_BR,
        "advantages_B": advantages_B,
        "mask_BR": mask_BR,
        "rollout_logp_BR": rollout_logp_BR,
        "ref_logp_BR": ref_logp_BR,
    }
    _check_inputs(
        hidden_BRH,
        lm_head_weight_VH,
        targets_BR,
        row_tensors,
        chunk_size,
        temperature,
        policy_loss_options,
    )
    batch, length, width = hidden_BRH.shape
    denominator = float(global_denominator)  # once, not one device sync per chunk
    weight_VH = lm_head_weight_VH
    needs_hidden = torch.is_grad_enabled() and hidden_BRH.requires_grad
    needs_weight = torch.is_grad_enabled() and weight_VH.requires_grad
    device = hidden_BRH.device
    dtype = torch.promote_types(hidden_BRH.dtype, torch.float32)
    hidden_TH = hidden_BRH.detach().reshape(batch * length, width)
    weight_VH = weight_VH.detach()
    targets_T = targets_BR.reshape(-1).to(torch.int64)
    chunks = _chunks(batch, length, chunk_size)
    split_rows = length > chunk_size
    options = dict(policy_loss_options)
    row_counts: list[int] = []
    if split_rows and options.get("aggregation") == "seq-mean-token-mean":
        # A piece of a row divides by its whole row's token count: sum-norm with L_max = that count.
        row_counts = _check_mask(mask_BR).sum(dim=-1).tolist()
        options["aggregation"] = "seq-mean-token-sum-norm"

    logp_T = torch.empty(batch * length, dtype=dtype, device=device)
    entropy_T = torch.empty(batch * length if with_entropy else 0, dtype=dtype, device=device)
    grad_hidden_TH = torch.empty_like(hidden_TH) if needs_hidden else None
    grad_weight_VH = None
    if needs_weight:
        # Summed over chunks in float32 at least, as token_logprobs' backward does for bf16 weights.
        grad_weight_VH = torch.zeros(
            weight_VH.shape, dtype=torch.promote_types(weight_VH.dtype, torch.float32), device=device
        )
    loss_total = torch.zeros((), dtype=torch.float64, device=device)
    metric_parts: list[dict[str, float]] = []
    for rows, columns in chunks:
        first = rows.start * length + columns.start
        last = (rows.stop - 1) * length + columns.stop
        shape = (rows.stop - rows.start, columns.stop - columns.start)
        hidden_CH, targets_C = hidden_TH[first:last], targets_T[first:last]
        logp_CV, logp_C, entropy_C = _chunk_forward(
            hidden_CH, weight_VH, targets_C, temperature, with_entropy
        )
        logp_T[first:last] = logp_C
        if entropy_C is not None:
            entropy_T[first:last] = entropy_C
        if row_counts:
            options["max_response_length"] = max(1, row_counts[rows.start])
        # A detached leaf copy of the chunk's log-probs: policy_loss's graph ends there.
        leaf_logp = logp_C.reshape(shape).detach().requires_grad_(needs_hidden or needs_weight)
        with torch.enable_grad():
            loss_c, metrics_c = policy_loss(
                leaf_logp,
                logp_C.reshape(shape) if old_logp_BR is None else old_logp_BR[rows, columns],
                _piece(advantages_B, rows, columns),
                mask_BR[rows, columns],
                global_denominator=denominator,
                rollout_logp_BT=None if rollout_logp_BR is None else rollout_logp_BR[rows, columns],
                ref_logp_BT=None if ref_logp_BR is None else ref_logp_BR[rows, columns],
                entropy_BT=None if entropy_C is None else entropy_C.reshape(shape),
                **options,
            )
            if leaf_logp.requires_grad:
                (grad_logp,) = torch.autograd.grad(loss_c, leaf_logp, allow_unused=True)
                if grad_logp is None:
                    grad_logp = torch.zeros_like(leaf_logp)
                _chunk_gradients(
                    logp_CV,
                    grad_logp.detach().reshape(-1) / temperature,
                    targets_C,
                    hidden_CH,
                    weight_VH,
                    None if grad_hidden_TH is None else grad_hidden_TH[first:last],
                    grad_weight_VH,
                )
        loss_total += loss_c.detach().to(torch.float64)
        metric_parts.append(metrics_c)
        del logp_CV

    metrics = _merge_metrics(metric_parts)
    if split_rows:  # a row cut into pieces was counted once per piece with tokens
        metrics["num_sequences"] = float(loss_denominator(mask_BR, "seq-mean-token-mean"))
    loss = loss_total.to(dtype)
    if needs_hidden or needs_weight:
        if grad_weight_VH is not None:
            grad_weight_VH = grad_weight_VH.to(weight_VH.dtype)
        grad_hidden_BRH = None if grad_hidden_TH is None else grad_hidden_TH.view(batch, length, width)
        loss = _GradientFromForward.apply(
            loss, hidden_BRH, lm_head_weight_VH, grad_hidden_BRH, grad_weight_VH
        )
    logp_BR = logp_T.view(batch, length)
    entropy_BR = entropy_T.view(batch, length) if with_entropy else None
    return loss, metrics, logp_BR, entropy_BR

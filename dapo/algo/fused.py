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

Inputs are checked once per call and the loss options once when `LossOptions` is built; the chunks
use `dapo.algo.loss`'s per-token pieces directly and keep their metrics on the device, so a call reads
back to the host twice (the target range check, the metrics), whatever the number of chunks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from dapo.algo.logprobs import chunk_logits
from dapo.algo.loss import (
    LossOptions,
    aggregate,
    check_denominator,
    check_mask,
    loss_denominator,
    merge_metric_tensors,
    metric_tensors,
    metrics_to_host,
    token_losses,
)

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
    options: LossOptions,
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
    options.check_references(
        has_rollout=row_tensors["rollout_logp_BR"] is not None,
        has_ref=row_tensors["ref_logp_BR"] is not None,
        suffix="BR",
    )


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
        logits_CV = chunk_logits(hidden_CH, weight_VH, temperature)  # matmul 1
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


class _Rows(NamedTuple):
    """The per-row inputs of a batch, or of one chunk of it."""

    old: torch.Tensor | None
    advantages: torch.Tensor
    is_token: torch.Tensor
    rollout: torch.Tensor | None
    ref: torch.Tensor | None

    def piece(self, rows: slice, columns: slice) -> _Rows:
        def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else _piece(tensor, rows, columns)

        return _Rows(
            cut(self.old),
            _piece(self.advantages, rows, columns),
            _piece(self.is_token, rows, columns),
            cut(self.rollout),
            cut(self.ref),
        )


@dataclass
class _Accumulator:
    """What the chunks of one call fill in: log-probs, entropies, gradients, loss and metrics."""

    logp_T: torch.Tensor
    entropy_T: torch.Tensor | None
    grad_hidden_TH: torch.Tensor | None
    grad_weight_VH: torch.Tensor | None
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def empty(
        cls,
        hidden_TH: torch.Tensor,
        weight_VH: torch.Tensor,
        with_entropy: bool,
        needs_hidden: bool,
        needs_weight: bool,
    ) -> _Accumulator:
        tokens, device = hidden_TH.shape[0], hidden_TH.device
        dtype = torch.promote_types(hidden_TH.dtype, torch.float32)
        grad_weight_VH = None
        if needs_weight:
            # Summed over chunks in float32 at least, as token_logprobs' backward does for bf16 weights.
            grad_dtype = torch.promote_types(weight_VH.dtype, torch.float32)
            grad_weight_VH = torch.zeros(weight_VH.shape, dtype=grad_dtype, device=device)
        return cls(
            logp_T=torch.empty(tokens, dtype=dtype, device=device),
            entropy_T=torch.empty(tokens, dtype=dtype, device=device) if with_entropy else None,
            grad_hidden_TH=torch.empty_like(hidden_TH) if needs_hidden else None,
            grad_weight_VH=grad_weight_VH,
            loss=torch.zeros((), dtype=torch.float64, device=device),
        )


def _chunk_step(
    acc: _Accumulator,
    span: tuple[int, int, tuple[int, int]],
    hidden_TH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_T: torch.Tensor,
    pieces: _Rows,
    options: LossOptions,
    denominator: float,
    temperature: float,
    row_tokens: int | None,
) -> None:
    """One chunk (tokens first:last of the flat batch, `shape` rows x columns): forward, the loss on
    its rows, and the chunk's gradient formed in its logits buffer. `pieces` are the per-row inputs
    cut to the chunk; `row_tokens` is the whole row's token count when the chunk is a piece of a row
    under "seq-mean-token-mean" (the piece divides by it), else None."""
    first, last, shape = span
    hidden_CH, targets_C = hidden_TH[first:last], targets_T[first:last]
    with_entropy = acc.entropy_T is not None
    logp_CV, logp_C, entropy_C = _chunk_forward(hidden_CH, weight_VH, targets_C, temperature, with_entropy)
    acc.logp_T[first:last] = logp_C
    if acc.entropy_T is not None and entropy_C is not None:
        acc.entropy_T[first:last] = entropy_C
    needs_grad = acc.grad_hidden_TH is not None or acc.grad_weight_VH is not None
    # A detached leaf copy of the chunk's log-probs: the loss's graph ends there.
    leaf_logp = logp_C.reshape(shape).detach().requires_grad_(needs_grad)
    old_logp = logp_C.reshape(shape) if pieces.old is None else pieces.old
    is_token = pieces.is_token
    with torch.enable_grad():
        terms = token_losses(
            leaf_logp, old_logp, pieces.advantages, is_token, options, pieces.rollout, pieces.ref
        )
        if row_tokens is None:
            loss_c = aggregate(terms.loss_BT, is_token, options, denominator)
        else:
            loss_c = terms.loss_BT.sum() / max(1, row_tokens) / denominator
        if needs_grad:
            (grad_logp,) = torch.autograd.grad(loss_c, leaf_logp, allow_unused=True)
            if grad_logp is None:
                grad_logp = torch.zeros_like(leaf_logp)
            _chunk_gradients(
                logp_CV,
                grad_logp.detach().reshape(-1) / temperature,
                targets_C,
                hidden_CH,
                weight_VH,
                None if acc.grad_hidden_TH is None else acc.grad_hidden_TH[first:last],
                acc.grad_weight_VH,
            )
    entropy = None if entropy_C is None else entropy_C.reshape(shape)
    part = metric_tensors(terms, is_token, options, old_logp, pieces.rollout, entropy)
    merge_metric_tensors(acc.metrics, part)
    acc.loss += loss_c.detach().to(torch.float64)


def _span(rows: slice, columns: slice, length: int) -> tuple[int, int, tuple[int, int]]:
    """A chunk's first and last flat token index (rows of `length` tokens) and its (rows, columns) shape."""
    return (
        rows.start * length + columns.start,
        (rows.stop - 1) * length + columns.stop,
        (rows.stop - rows.start, columns.stop - columns.start),
    )


def _with_gradients(
    loss: torch.Tensor, acc: _Accumulator, hidden_BRH: torch.Tensor, lm_head_weight_VH: torch.Tensor
) -> torch.Tensor:
    """`loss` whose backward hands hidden_BRH and lm_head_weight_VH the gradients the chunks formed."""
    grad_weight_VH = None if acc.grad_weight_VH is None else acc.grad_weight_VH.to(lm_head_weight_VH.dtype)
    grad_hidden_BRH = None if acc.grad_hidden_TH is None else acc.grad_hidden_TH.view(hidden_BRH.shape)
    return _GradientFromForward.apply(loss, hidden_BRH, lm_head_weight_VH, grad_hidden_BRH, grad_weight_VH)


def fused_policy_loss(
    hidden_BRH: torch.Tensor,
    lm_head_weight_VH: torch.Tensor,
    targets_BR: torch.Tensor,
    old_logp_BR: torch.Tensor | None,
    advantages_B: torch.Tensor,
    mask_BR: torch.Tensor,
    *,
    options: LossOptions,
    global_denominator: float | int | torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
    with_entropy: bool = False,
    rollout_logp_BR: torch.Tensor | None = None,
    ref_logp_BR: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor | None]:
    """`policy_loss(token_logprobs(...))` with its gradient formed in the forward pass (see module docstring).

    hidden_BRH: (B, R, H) hidden states predicting the response tokens (after the final norm).
    lm_head_weight_VH: (V, H) output projection, same dtype and device as hidden_BRH.
    targets_BR: (B, R) int token ids in [0, V).
    old_logp_BR: (B, R) log-probs before this optimizer step, or None for the current ones (ratio 1,
        as with one optimizer step per batch).
    advantages_B: (B,) or (B, R). mask_BR: (B, R) bool or 0/1, the tokens in the loss.
    options, global_denominator, rollout_logp_BR (policy_loss's rollout_logp_BT) and ref_logp_BR (its
        ref_logp_BT) are as in `policy_loss`.
    Returns (loss, metrics, logp_BR, entropy_BR): the loss (a scalar whose backward gives hidden_BRH and
    lm_head_weight_VH their gradients), `policy_loss`'s raw metrics for the whole batch, and the
    detached float32 (float64 for float64 inputs) log-probs and entropies (None unless with_entropy).
    Over 60 lines only for this signature and its documentation; the work per chunk is `_chunk_step`.
    """
    row_tensors = {
        "old_logp_BR": old_logp_BR,
        "advantages_B": advantages_B,
        "mask_BR": mask_BR,
        "rollout_logp_BR": rollout_logp_BR,
        "ref_logp_BR": ref_logp_BR,
    }
    _check_inputs(hidden_BRH, lm_head_weight_VH, targets_BR, row_tensors, chunk_size, temperature, options)
    denominator = check_denominator(global_denominator)
    batch, length, width = hidden_BRH.shape
    needs_hidden = torch.is_grad_enabled() and hidden_BRH.requires_grad
    needs_weight = torch.is_grad_enabled() and lm_head_weight_VH.requires_grad
    hidden_TH = hidden_BRH.detach().reshape(batch * length, width)
    weight_VH = lm_head_weight_VH.detach()
    split_rows = length > chunk_size
    per_row = _Rows(old_logp_BR, advantages_B, check_mask(mask_BR), rollout_logp_BR, ref_logp_BR)
    row_counts: list[int] = []
    if split_rows and options.aggregation == "seq-mean-token-mean":
        row_counts = per_row.is_token.sum(dim=-1).tolist()
    acc = _Accumulator.empty(hidden_TH, weight_VH, with_entropy, needs_hidden, needs_weight)
    targets_T = targets_BR.reshape(-1).to(torch.int64)
    for rows, columns in _chunks(batch, length, chunk_size):
        span = _span(rows, columns, length)
        pieces = per_row.piece(rows, columns)
        row_tokens = row_counts[rows.start] if row_counts else None
        _chunk_step(
            acc, span, hidden_TH, weight_VH, targets_T, pieces, options, denominator, temperature, row_tokens
        )

    metrics = metrics_to_host(acc.metrics)
    if split_rows:  # a row cut into pieces was counted once per piece with tokens
        metrics["num_sequences"] = float(loss_denominator(mask_BR, "seq-mean-token-mean"))
    loss = acc.loss.to(acc.logp_T.dtype)
    if needs_hidden or needs_weight:
        loss = _with_gradients(loss, acc, hidden_BRH, lm_head_weight_VH)
    logp_BR = acc.logp_T.view(batch, length)
    entropy_BR = None if acc.entropy_T is None else acc.entropy_T.view(batch, length)
    return loss, metrics, logp_BR, entropy_BR

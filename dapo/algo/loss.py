"""DAPO's clipped policy-gradient loss (DAPO eq. 8 with eq. 10 / clip-higher), in torch.

Per token, with r = exp(clamp(logp - old_logp, -log_ratio_clamp, +log_ratio_clamp)):

    l = max(-A r, -A clamp(r, 1 - eps_low, 1 + eps_high))     # eq. 8's min, as a loss (sign flipped)
    l = where(A < 0, min(l, -A c), l)                          # dual clip (Ye et al. 2020), if c is set
    l = l * min(exp(old_logp - rollout_logp), C)               # truncated importance sampling, if C is set
    l = l + beta * (exp(ref - logp) - (ref - logp) - 1)        # k3 KL to a reference policy, if beta > 0

Departures from the paper: eq. 8 has no dual clip, no importance-sampling correction for the
rollout/trainer mismatch and no KL term (all off by default); the log-ratio clamp only guards exp
against overflow. The TIS weight multiplies the clipped surrogate, not the KL term.

Aggregation: the loss of a micro-batch is its CONTRIBUTION to the global-batch loss, so summing
micro-batch losses (and gradients) over gradient-accumulation steps and data-parallel ranks gives
exactly the whole-batch loss (no averaging of averages):
- "token-mean" (DAPO eq. 8): sum over unmasked tokens of l / D, D = unmasked tokens in the global batch.
- "seq-mean-token-mean" (GRPO): sum over sequences of (mean of l over its tokens) / D,
  D = sequences with at least one unmasked token in the global batch.
- "seq-mean-token-sum-norm" (Dr. GRPO): sum over sequences of (sum of l over its tokens / L_max) / D,
  D as for seq-mean-token-mean and L_max = `max_response_length`, a constant. This equals
  masked_sum(l) / (D * L_max). (verl's mode of this name divides by L_max only, not by D.)
`loss_denominator(mask_BT, aggregation)` gives a micro-batch's share of D; sum it over micro-batches
and ranks (e.g. all_reduce) before calling `policy_loss`.

Metrics are returned as sums over unmasked tokens (`*_sum`, `*_count`), maxima (`*_max`) and counts
(`num_tokens`, `num_sequences`), so they combine exactly: `combine_metrics` sums sums and counts, takes
max of maxima, then divides by the total token count. To combine across ranks, gather the raw dicts
(e.g. `torch.distributed.all_gather_object`) and call `combine_metrics` on the list, or all-reduce
the sums with SUM and the maxima with MAX before dividing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Literal, get_args

import torch

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")


def _check_mask(mask_BT: torch.Tensor) -> torch.Tensor:
    if mask_BT.ndim != 2:
        raise ValueError(f"mask_BT must be two-dimensional (B, T), got shape {tuple(mask_BT.shape)}")
    if mask_BT.dtype == torch.bool:
        return mask_BT
    if mask_BT.dtype.is_complex:
        raise ValueError(f"mask_BT must be bool or 0/1 numbers, got dtype {mask_BT.dtype}")
    return mask_BT != 0


def loss_denominator(mask_BT: torch.Tensor, aggregation: Aggregation = "token-mean") -> int:
    """This micro-batch's share of `global_denominator`: unmasked tokens for "token-mean", sequences
    with at least one unmasked token for the sequence modes. Sum it over all micro-batches and ranks."""
    _check_aggregation(aggregation)
    is_token_BT = _check_mask(mask_BT)
    if aggregation == "token-mean":
        return int(is_token_BT.sum().item())
    return int(is_token_BT.any(dim=-1).sum().item())


def policy_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    ratio_clip_min: float,
    ratio_clip_max: float,
    global_denominator: float | int | torch.Tensor,
    ratio_clip_c: float | None = None,
    rollout_logp_BT: torch.Tensor | None = None,
    tis_cap: float | None = None,
    ref_logp_BT: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "token-mean",
    max_response_length: int | None = None,
    log_ratio_clamp: float = 20.0,
    entropy_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's contribution to the global DAPO loss, and its raw (summable) metrics.

    logp_BT: (B, T) log-probs of the response tokens under the current policy (with grad).
    old_logp_BT: (B, T) log-probs under the policy before this optimizer step (no grad).
    advantages: (B,) one per sequence, or (B, T) one per token.
    mask_BT: (B, T) bool (or 0/1): which tokens are in the loss.
    ratio_clip_min / ratio_clip_max: eps_low / eps_high (0.2 / 0.28 in DAPO), both >= 0.
    global_denominator: the whole global batch's count (see module docstring), > 0.
    ratio_clip_c: dual-clip constant c > 1, or None.
    rollout_logp_BT + tis_cap: truncated importance sampling, weight min(exp(old - rollout), tis_cap);
        tis_cap None turns it off (rollout_logp_BT then only feeds the mismatch metric).
    ref_logp_BT + kl_coef: k3 KL penalty to a reference policy (kl_coef 0: off).
    max_response_length: L_max, required by "seq-mean-token-sum-norm".
    entropy_BT: (B, T) per-token entropy, only for the metric.
    """
    if logp_BT.ndim != 2:
        raise ValueError(f"logp_BT must be two-dimensional (B, T), got shape {tuple(logp_BT.shape)}")
    shape = tuple(logp_BT.shape)
    if logp_BT.numel() == 0:
        raise ValueError(f"logp_BT is empty (shape {shape}): expected at least one token")
    if not logp_BT.is_floating_point():
        raise ValueError(f"logp_BT must be a floating-point tensor, got dtype {logp_BT.dtype}")
    for name, tensor in (
        ("old_logp_BT", old_logp_BT),
        ("mask_BT", mask_BT),
        ("rollout_logp_BT", rollout_logp_BT),
        ("ref_logp_BT", ref_logp_BT),
        ("entropy_BT", entropy_BT),
    ):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have the shape of logp_BT {shape}, got {tuple(tensor.shape)}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must have shape (B,) = {shape[:1]} or (B, T) = {shape}, got {tuple(advantages.shape)}"
        )
    if not ratio_clip_min >= 0:
        raise ValueError(f"ratio_clip_min must be >= 0 (it is eps_low, not a ratio), got {ratio_clip_min}")
    if not ratio_clip_max >= 0:
        raise ValueError(f"ratio_clip_max must be >= 0 (it is eps_high, not a ratio), got {ratio_clip_max}")
    if ratio_clip_c is not None and not ratio_clip_c > 1:
        raise ValueError(f"ratio_clip_c must be > 1 (or None to disable dual clip), got {ratio_clip_c}")
    if tis_cap is not None:
        if not tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0 (or None to disable TIS), got {tis_cap}")
        if rollout_logp_BT is None:
            raise ValueError("tis_cap is set but rollout_logp_BT is None: TIS needs the rollout log-probs")
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0 and ref_logp_BT is None:
        raise ValueError("kl_coef > 0 needs ref_logp_BT (the reference policy's log-probs)")
    if not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")
    _check_aggregation(aggregation)
    if aggregation == "seq-mean-token-sum-norm" and (max_response_length is None or max_response_length < 1):
        raise ValueError(
            f"max_response_length must be >= 1 for aggregation='seq-mean-token-sum-norm', got {max_response_length}"
        )
    denominator = float(global_denominator)
    if not denominator > 0 or not math.isfinite(denominator):
        raise ValueError(f"global_denominator must be > 0 (the global batch's count), got {denominator}")
    is_token_BT = _check_mask(mask_BT)

    advantages_BT = advantages.to(logp_BT.dtype)
    if advantages_BT.ndim == 1:
        advantages_BT = advantages_BT[:, None].expand(shape)
    log_ratio_BT = torch.clamp(logp_BT - old_logp_BT.detach(), -log_ratio_clamp, log_ratio_clamp)
    ratio_BT = torch.exp(log_ratio_BT)
    clipped_ratio_BT = torch.clamp(ratio_BT, 1.0 - ratio_clip_min, 1.0 + ratio_clip_max)
    token_loss_BT = torch.maximum(-advantages_BT * ratio_BT, -advantages_BT * clipped_ratio_BT)
    is_negative_BT = advantages_BT < 0
    if ratio_clip_c is not None:
        dual_bound_BT = -advantages_BT * ratio_clip_c
        is_dual_clipped_BT = is_negative_BT & (token_loss_BT > dual_bound_BT)
        token_loss_BT = torch.where(
            is_negative_BT, torch.minimum(token_loss_BT, dual_bound_BT), token_loss_BT
        )
    if tis_cap is not None:
        assert rollout_logp_BT is not None
        tis_log_BT = torch.clamp(old_logp_BT - rollout_logp_BT, -log_ratio_clamp, log_ratio_clamp).detach()
        tis_raw_BT = torch.exp(tis_log_BT)
        token_loss_BT = token_loss_BT * torch.clamp(tis_raw_BT, max=tis_cap)
    if ref_logp_BT is not None:
        ref_log_ratio_BT = torch.clamp(ref_logp_BT.detach() - logp_BT, -log_ratio_clamp, log_ratio_clamp)
        kl_ref_BT = torch.exp(ref_log_ratio_BT) - ref_log_ratio_BT - 1.0
        if kl_coef > 0:
            token_loss_BT = token_loss_BT + kl_coef * kl_ref_BT

    # where(), not multiply: padding positions may hold inf/NaN that must not leak into the sum.
    masked_loss_BT = torch.where(is_token_BT, token_loss_BT, torch.zeros_like(token_loss_BT))
    if aggregation == "token-mean":
        loss = masked_loss_BT.sum() / denominator
    else:
        seq_sum_B = masked_loss_BT.sum(dim=-1)
        if aggregation == "seq-mean-token-mean":
            seq_loss_B = seq_sum_B / is_token_BT.sum(dim=-1).clamp(min=1).to(seq_sum_B.dtype)
        else:
            assert max_response_length is not None
            seq_loss_B = seq_sum_B / max_response_length
        loss = seq_loss_B.sum() / denominator

    with torch.no_grad():
        mask_f = is_token_BT.to(logp_BT.dtype)
        ratio_d = ratio_BT.detach()
        names = ["num_tokens", "num_sequences", "token_loss_sum", "clip_high_count", "clip_low_count"]
        values = [
            mask_f.sum(),
            is_token_BT.any(dim=-1).sum().to(mask_f.dtype),
            masked_loss_BT.detach().sum(),
            ((advantages_BT > 0) & (ratio_d > 1.0 + ratio_clip_max) & is_token_BT).sum().to(mask_f.dtype),
            (is_negative_BT & (ratio_d < 1.0 - ratio_clip_min) & is_token_BT).sum().to(mask_f.dtype),
        ]
        if ratio_clip_c is not None:
            names.append("dual_clip_count")
            values.append((is_dual_clipped_BT & is_token_BT).sum().to(mask_f.dtype))
        # k3 estimator of KL(old || current) on tokens sampled from old: (r - 1) - log r >= 0.
        log_ratio_d = log_ratio_BT.detach()
        names += ["ratio_sum", "ratio_max", "approx_kl_sum"]
        values += [
            (ratio_d * mask_f).sum(),
            torch.where(is_token_BT, ratio_d, torch.zeros_like(ratio_d)).max(),
            (((ratio_d - 1.0) - log_ratio_d) * mask_f).sum(),
        ]
        if rollout_logp_BT is not None:
            names.append("rollout_mismatch_sum")
            mismatch_BT = (old_logp_BT - rollout_logp_BT).abs()
            values.append(torch.where(is_token_BT, mismatch_BT, torch.zeros_like(mismatch_BT)).sum())
        if tis_cap is not None:
            names.append("tis_truncated_count")
            values.append(((tis_raw_BT > tis_cap) & is_token_BT).sum().to(mask_f.dtype))
        if entropy_BT is not None:
            names.append("entropy_sum")
            entropy_d = entropy_BT.detach().to(mask_f.dtype)
            values.append(torch.where(is_token_BT, entropy_d, torch.zeros_like(entropy_d)).sum())
        if ref_logp_BT is not None:
            names.append("kl_ref_sum")
            values.append((kl_ref_BT.detach() * mask_f).sum())
        numbers = torch.stack([v.to(torch.float64) for v in values]).tolist()  # one device sync
    return loss, dict(zip(names, numbers, strict=True))


# raw metric -> (combined name, how): "mean" divides the summed value by the summed num_tokens.
_COMBINE: dict[str, tuple[str, str]] = {
    "token_loss_sum": ("token_loss_mean", "mean"),
    "clip_high_count": ("clip_high_fraction", "mean"),
    "clip_low_count": ("clip_low_fraction", "mean"),
    "dual_clip_count": ("dual_clip_fraction", "mean"),
    "ratio_sum": ("ratio_mean", "mean"),
    "ratio_max": ("ratio_max", "max"),
    "approx_kl_sum": ("approx_kl", "mean"),
    "rollout_mismatch_sum": ("rollout_mismatch_mean", "mean"),
    "tis_truncated_count": ("tis_truncated_fraction", "mean"),
    "entropy_sum": ("entropy_mean", "mean"),
    "kl_ref_sum": ("kl_ref_mean", "mean"),
}


def combine_metrics(metrics: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Combine raw `policy_loss` metrics of micro-batches (and ranks) into per-token figures.

    Sums and counts are added, then divided by the total `num_tokens` of the dicts that carry them;
    maxima take the max. The result equals the metric of one big batch exactly. Output keys:
    num_tokens, num_sequences, token_loss_mean, clip_high_fraction, clip_low_fraction, ratio_mean,
    ratio_max, approx_kl, and when present dual_clip_fraction, rollout_mismatch_mean,
    tis_truncated_fraction, entropy_mean, kl_ref_mean. A figure over zero tokens is 0.
    """
    items = list(metrics)
    if not items:
        raise ValueError("metrics is empty: expected at least one metrics dict from policy_loss")
    totals: dict[str, float] = {}
    tokens: dict[str, float] = {}
    for index, item in enumerate(items):
        if "num_tokens" not in item:
            raise ValueError(f"metrics[{index}] has no 'num_tokens': expected a dict returned by policy_loss")
        for key, value in item.items():
            if key in ("num_tokens", "num_sequences"):
                totals[key] = totals.get(key, 0.0) + value
                continue
            if key not in _COMBINE:
                raise ValueError(f"metrics[{index}] has unknown key {key!r}")
            name, how = _COMBINE[key]
            if how == "max":
                totals[name] = max(totals.get(name, -math.inf), value)
            else:
                totals[name] = totals.get(name, 0.0) + value
                tokens[name] = tokens.get(name, 0.0) + item["num_tokens"]
    for name, count in tokens.items():
        totals[name] = totals[name] / count if count > 0 else 0.0
    return totals

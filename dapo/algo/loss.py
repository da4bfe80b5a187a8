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
from dataclasses import dataclass
from typing import Literal, get_args

import torch

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")


def check_mask(mask_BT: torch.Tensor) -> torch.Tensor:
    """`mask_BT` as a bool (B, T) tensor; a clear error for anything else."""
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
    is_token_BT = check_mask(mask_BT)
    if aggregation == "token-mean":
        return int(is_token_BT.sum().item())
    return int(is_token_BT.any(dim=-1).sum().item())


@dataclass(frozen=True)
class LossOptions:
    """The loss's scalar options, checked once when built (a run builds them once from its config).

    ratio_clip_min / ratio_clip_max: eps_low / eps_high (0.2 / 0.28 in DAPO), both >= 0.
    ratio_clip_c: dual-clip constant c > 1, or None.
    tis_cap: truncated importance sampling, weight min(exp(old - rollout), tis_cap); None: off.
    kl_coef: k3 KL penalty to a reference policy (0: off).
    aggregation / max_response_length: see the module docstring (L_max for "seq-mean-token-sum-norm").
    log_ratio_clamp: bound of |log ratio| before exp.
    """

    ratio_clip_min: float
    ratio_clip_max: float
    ratio_clip_c: float | None = None
    tis_cap: float | None = None
    kl_coef: float = 0.0
    aggregation: Aggregation = "token-mean"
    max_response_length: int | None = None
    log_ratio_clamp: float = 20.0

    def __post_init__(self) -> None:
        if not self.ratio_clip_min >= 0:
            raise ValueError(
                f"ratio_clip_min must be >= 0 (it is eps_low, not a ratio), got {self.ratio_clip_min}"
            )
        if not self.ratio_clip_max >= 0:
            raise ValueError(
                f"ratio_clip_max must be >= 0 (it is eps_high, not a ratio), got {self.ratio_clip_max}"
            )
        if self.ratio_clip_c is not None and not self.ratio_clip_c > 1:
            raise ValueError(
                f"ratio_clip_c must be > 1 (or None to disable dual clip), got {self.ratio_clip_c}"
            )
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0 (or None to disable TIS), got {self.tis_cap}")
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if not self.log_ratio_clamp > 0:
            raise ValueError(f"log_ratio_clamp must be > 0, got {self.log_ratio_clamp}")
        _check_aggregation(self.aggregation)
        if self.aggregation == "seq-mean-token-sum-norm" and (
            self.max_response_length is None or self.max_response_length < 1
        ):
            raise ValueError(
                "max_response_length must be >= 1 for aggregation='seq-mean-token-sum-norm', "
                f"got {self.max_response_length}"
            )

    def check_references(self, *, has_rollout: bool, has_ref: bool, suffix: str = "BT") -> None:
        """The per-token inputs these options need are given (TIS: rollout log-probs; KL: reference)."""
        if self.tis_cap is not None and not has_rollout:
            raise ValueError(
                f"tis_cap is set but rollout_logp_{suffix} is None: TIS needs the rollout log-probs"
            )
        if self.kl_coef > 0 and not has_ref:
            raise ValueError(f"kl_coef > 0 needs ref_logp_{suffix} (the reference policy's log-probs)")


def check_denominator(global_denominator: float | int | torch.Tensor) -> float:
    denominator = float(global_denominator)
    if not denominator > 0 or not math.isfinite(denominator):
        raise ValueError(f"global_denominator must be > 0 (the global batch's count), got {denominator}")
    return denominator


def _check_tensors(
    logp_BT: torch.Tensor, advantages: torch.Tensor, same_shape: Mapping[str, torch.Tensor | None]
) -> None:
    if logp_BT.ndim != 2:
        raise ValueError(f"logp_BT must be two-dimensional (B, T), got shape {tuple(logp_BT.shape)}")
    shape = tuple(logp_BT.shape)
    if logp_BT.numel() == 0:
        raise ValueError(f"logp_BT is empty (shape {shape}): expected at least one token")
    if not logp_BT.is_floating_point():
        raise ValueError(f"logp_BT must be a floating-point tensor, got dtype {logp_BT.dtype}")
    for name, tensor in same_shape.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have the shape of logp_BT {shape}, got {tuple(tensor.shape)}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must have shape (B,) = {shape[:1]} or (B, T) = {shape}, got {tuple(advantages.shape)}"
        )


@dataclass
class TokenLosses:
    """Per-token terms of the loss (B, T), kept for the metrics."""

    loss_BT: torch.Tensor  # l, masked (0 off the mask)
    advantages_BT: torch.Tensor
    log_ratio_BT: torch.Tensor
    ratio_BT: torch.Tensor
    is_dual_clipped_BT: torch.Tensor | None = None
    tis_raw_BT: torch.Tensor | None = None
    kl_ref_BT: torch.Tensor | None = None


def token_losses(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages: torch.Tensor,
    is_token_BT: torch.Tensor,
    options: LossOptions,
    rollout_logp_BT: torch.Tensor | None = None,
    ref_logp_BT: torch.Tensor | None = None,
) -> TokenLosses:
    """The per-token DAPO loss l of the module docstring, for inputs already checked."""
    clamp = options.log_ratio_clamp
    advantages_BT = advantages.to(logp_BT.dtype)
    if advantages_BT.ndim == 1:
        advantages_BT = advantages_BT[:, None].expand(logp_BT.shape)
    log_ratio_BT = torch.clamp(logp_BT - old_logp_BT.detach(), -clamp, clamp)
    ratio_BT = torch.exp(log_ratio_BT)
    clipped_ratio_BT = torch.clamp(ratio_BT, 1.0 - options.ratio_clip_min, 1.0 + options.ratio_clip_max)
    loss_BT = torch.maximum(-advantages_BT * ratio_BT, -advantages_BT * clipped_ratio_BT)
    terms = TokenLosses(loss_BT, advantages_BT, log_ratio_BT, ratio_BT)
    if options.ratio_clip_c is not None:
        is_negative_BT = advantages_BT < 0
        dual_bound_BT = -advantages_BT * options.ratio_clip_c
        terms.is_dual_clipped_BT = is_negative_BT & (loss_BT > dual_bound_BT)
        loss_BT = torch.where(is_negative_BT, torch.minimum(loss_BT, dual_bound_BT), loss_BT)
    if options.tis_cap is not None:
        assert rollout_logp_BT is not None
        terms.tis_raw_BT = torch.exp(torch.clamp(old_logp_BT - rollout_logp_BT, -clamp, clamp).detach())
        loss_BT = loss_BT * torch.clamp(terms.tis_raw_BT, max=options.tis_cap)
    if ref_logp_BT is not None:
        ref_log_ratio_BT = torch.clamp(ref_logp_BT.detach() - logp_BT, -clamp, clamp)
        terms.kl_ref_BT = torch.exp(ref_log_ratio_BT) - ref_log_ratio_BT - 1.0
        if options.kl_coef > 0:
            loss_BT = loss_BT + options.kl_coef * terms.kl_ref_BT
    # where(), not multiply: padding positions may hold inf/NaN that must not leak into the sum.
    terms.loss_BT = torch.where(is_token_BT, loss_BT, torch.zeros_like(loss_BT))
    return terms


def aggregate(
    masked_loss_BT: torch.Tensor, is_token_BT: torch.Tensor, options: LossOptions, denominator: float
) -> torch.Tensor:
    """The micro-batch's share of the global loss under `options.aggregation` (module docstring)."""
    if options.aggregation == "token-mean":
        return masked_loss_BT.sum() / denominator
    seq_sum_B = masked_loss_BT.sum(dim=-1)
    if options.aggregation == "seq-mean-token-mean":
        seq_loss_B = seq_sum_B / is_token_BT.sum(dim=-1).clamp(min=1).to(seq_sum_B.dtype)
    else:
        assert options.max_response_length is not None
        seq_loss_B = seq_sum_B / options.max_response_length
    return seq_loss_B.sum() / denominator


def policy_loss(
    logp_BT: torch.Tensor,
    old_logp_BT: torch.Tensor,
    advantages: torch.Tensor,
    mask_BT: torch.Tensor,
    *,
    options: LossOptions,
    global_denominator: float | int | torch.Tensor,
    rollout_logp_BT: torch.Tensor | None = None,
    ref_logp_BT: torch.Tensor | None = None,
    entropy_BT: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's contribution to the global DAPO loss, and its raw (summable) metrics.

    logp_BT: (B, T) log-probs of the response tokens under the current policy (with grad).
    old_logp_BT: (B, T) log-probs under the policy before this optimizer step (no grad).
    advantages: (B,) one per sequence, or (B, T) one per token.
    mask_BT: (B, T) bool (or 0/1): which tokens are in the loss.
    options: the clips, TIS cap, KL coefficient and aggregation (`LossOptions`).
    global_denominator: the whole global batch's count (see module docstring), > 0.
    rollout_logp_BT: the rollout's log-probs, for TIS (and the mismatch metric).
    ref_logp_BT: the reference policy's log-probs, for the KL term (and its metric).
    entropy_BT: (B, T) per-token entropy, only for the metric.
    """
    _check_tensors(
        logp_BT,
        advantages,
        {
            "old_logp_BT": old_logp_BT,
            "mask_BT": mask_BT,
            "rollout_logp_BT": rollout_logp_BT,
            "ref_logp_BT": ref_logp_BT,
            "entropy_BT": entropy_BT,
        },
    )
    options.check_references(has_rollout=rollout_logp_BT is not None, has_ref=ref_logp_BT is not None)
    denominator = check_denominator(global_denominator)
    is_token_BT = check_mask(mask_BT)
    terms = token_losses(logp_BT, old_logp_BT, advantages, is_token_BT, options, rollout_logp_BT, ref_logp_BT)
    loss = aggregate(terms.loss_BT, is_token_BT, options, denominator)
    metrics = metric_tensors(terms, is_token_BT, options, old_logp_BT, rollout_logp_BT, entropy_BT)
    return loss, metrics_to_host(metrics)


def metric_tensors(
    terms: TokenLosses,
    is_token_BT: torch.Tensor,
    options: LossOptions,
    old_logp_BT: torch.Tensor,
    rollout_logp_BT: torch.Tensor | None = None,
    entropy_BT: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The raw metrics of the module docstring as 0-d float64 tensors on the loss's device (no sync)."""
    with torch.no_grad():
        mask_f = is_token_BT.to(terms.loss_BT.dtype)

        def token_sum(values_BT: torch.Tensor) -> torch.Tensor:
            values_BT = values_BT.detach().to(mask_f.dtype)
            return torch.where(is_token_BT, values_BT, torch.zeros_like(values_BT)).sum()

        ratio_d = terms.ratio_BT.detach()
        log_ratio_d = terms.log_ratio_BT.detach()
        metrics = {
            "num_tokens": mask_f.sum(),
            "num_sequences": is_token_BT.any(dim=-1).sum(),
            "token_loss_sum": terms.loss_BT.detach().sum(),
            "clip_high_count": token_sum(
                (terms.advantages_BT > 0) & (ratio_d > 1.0 + options.ratio_clip_max)
            ),
            "clip_low_count": token_sum((terms.advantages_BT < 0) & (ratio_d < 1.0 - options.ratio_clip_min)),
        }
        if terms.is_dual_clipped_BT is not None:
            metrics["dual_clip_count"] = token_sum(terms.is_dual_clipped_BT)
        metrics["ratio_sum"] = token_sum(ratio_d)
        metrics["ratio_max"] = torch.where(is_token_BT, ratio_d, torch.zeros_like(ratio_d)).max()
        # k3 estimator of KL(old || current) on tokens sampled from old: (r - 1) - log r >= 0.
        metrics["approx_kl_sum"] = token_sum((ratio_d - 1.0) - log_ratio_d)
        if rollout_logp_BT is not None:
            metrics["rollout_mismatch_sum"] = token_sum((old_logp_BT - rollout_logp_BT).abs())
        if terms.tis_raw_BT is not None and options.tis_cap is not None:
            metrics["tis_truncated_count"] = token_sum(terms.tis_raw_BT > options.tis_cap)
        if entropy_BT is not None:
            metrics["entropy_sum"] = token_sum(entropy_BT)
        if terms.kl_ref_BT is not None:
            metrics["kl_ref_sum"] = token_sum(terms.kl_ref_BT)
        return {name: value.to(torch.float64) for name, value in metrics.items()}


def merge_metric_tensors(
    total: dict[str, torch.Tensor], part: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """`part` folded into `total` as `combine_metrics` would before dividing: sums added, maxima maxed."""
    for key, value in part.items():
        if key not in total:
            total[key] = value
        elif _COMBINE.get(key, ("", "sum"))[1] == "max":
            total[key] = torch.maximum(total[key], value)
        else:
            total[key] = total[key] + value
    return total


def metrics_to_host(metrics: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Raw metric tensors as floats, in one device sync."""
    numbers = torch.stack(list(metrics.values())).tolist() if metrics else []
    return dict(zip(metrics.keys(), numbers, strict=True))


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

"""The DAPO algorithm as pure functions: no I/O, no services.

`group_advantages`, `dynamic_sampling_filter`, `overlong_penalty` and `overlong_filter_mask` work on
numpy arrays and Python lists and never import torch (the controller runs without it).
`LossOptions`, `policy_loss`, `combine_metrics`, `loss_denominator`, `token_logprobs` and `fused_policy_loss` need
torch; they are loaded lazily on first access, so `import dapo.algo` stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "group_advantages": "dapo.algo.advantages",
    "dynamic_sampling_filter": "dapo.algo.sampling",
    "DynamicSamplingResult": "dapo.algo.sampling",
    "overlong_penalty": "dapo.algo.shaping",
    "overlong_filter_mask": "dapo.algo.shaping",
    "LossOptions": "dapo.algo.loss",
    "policy_loss": "dapo.algo.loss",
    "combine_metrics": "dapo.algo.loss",
    "loss_denominator": "dapo.algo.loss",
    "token_logprobs": "dapo.algo.logprobs",
    "fused_policy_loss": "dapo.algo.fused",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from dapo.algo.advantages import group_advantages as group_advantages
    from dapo.algo.fused import fused_policy_loss as fused_policy_loss
    from dapo.algo.logprobs import token_logprobs as token_logprobs
    from dapo.algo.loss import LossOptions as LossOptions
    from dapo.algo.loss import combine_metrics as combine_metrics
    from dapo.algo.loss import loss_denominator as loss_denominator
    from dapo.algo.loss import policy_loss as policy_loss
    from dapo.algo.sampling import DynamicSamplingResult as DynamicSamplingResult
    from dapo.algo.sampling import dynamic_sampling_filter as dynamic_sampling_filter
    from dapo.algo.shaping import overlong_filter_mask as overlong_filter_mask
    from dapo.algo.shaping import overlong_penalty as overlong_penalty


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dapo.algo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

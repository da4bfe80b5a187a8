"""The tensor dtypes that cross between services: one table of names, item sizes and safetensors codes.

A weight manifest, a staged safetensors file, the trainer's published weights and its mixed-precision
policy all name dtypes by these strings (torch's names without `torch.`). The torch dtype of a name is
looked up lazily (`torch_dtype`), so this module imports without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    """One dtype: its name (also the attribute of `torch`), bytes per element, safetensors code."""

    name: str
    item_size: int
    safetensors: str


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", 4, "F32"),
        DType("bfloat16", 2, "BF16"),
        DType("float16", 2, "F16"),
        DType("float64", 8, "F64"),
        DType("int64", 8, "I64"),
        DType("int32", 4, "I32"),
        DType("uint8", 1, "U8"),
    )
}
"""Every dtype a weight update may carry, by name."""
BY_SAFETENSORS: dict[str, DType] = {d.safetensors: d for d in DTYPES.values()}

ServedDType = Literal["float32", "bfloat16", "float16"]
"""Dtypes the trainer publishes weights in and a rollout engine serves."""
SERVED_DTYPES: tuple[ServedDType, ...] = get_args(ServedDType)
TrainPrecision = Literal["float32", "bfloat16"]
"""Parameter dtypes of the trainer's forward and backward passes (gradients reduce in float32)."""
TRAIN_PRECISIONS: tuple[TrainPrecision, ...] = get_args(TrainPrecision)


def item_size(name: str) -> int:
    """Bytes per element of dtype `name`; ValueError for a name not in `DTYPES`."""
    return _lookup(name).item_size


def safetensors_code(name: str) -> str:
    """The safetensors header's code for dtype `name` ("bfloat16" -> "BF16")."""
    return _lookup(name).safetensors


def from_safetensors(code: str) -> str:
    """The dtype name of a safetensors code ("BF16" -> "bfloat16"); ValueError for an unknown code."""
    if code not in BY_SAFETENSORS:
        raise ValueError(
            f"unsupported safetensors dtype {code!r}: expected one of {', '.join(BY_SAFETENSORS)}"
        )
    return BY_SAFETENSORS[code].name


def torch_dtype(name: str) -> torch.dtype:
    """torch's dtype of that name (imports torch)."""
    import torch

    dtype = getattr(torch, _lookup(name).name)
    assert isinstance(dtype, torch.dtype)
    return dtype


def name_of(dtype: torch.dtype) -> str:
    """The table's name of a torch dtype; ValueError for one not in `DTYPES`."""
    name = str(dtype).removeprefix("torch.")
    _lookup(name)
    return name


def _lookup(name: str) -> DType:
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[name]

"""The TrainBatch: what the controller appends to a run's Redis Stream and the trainer consumes.

One stream entry has three fields: `batch_id`, `run_id` and `payload`. The payload is a safetensors
buffer holding ragged per-sequence arrays as flat arrays plus offsets, and the scalar fields in its
metadata. Numpy only: the controller never imports torch.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from dapo.safetensors_header import parse_header

FORMAT_VERSION = "1"


class BatchFormatError(ValueError):
    """A stream entry that is not a valid TrainBatch; the message names the batch and the field."""


def _flatten(seqs: list[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate([np.asarray(s, dtype=dtype) for s in seqs]) if seqs else np.zeros(0, dtype)
    return flat.astype(dtype, copy=False), offsets


def _split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


@dataclass
class TrainBatch:
    """Per-sequence training data for one optimizer-step group.

    Ragged lists hold one array per sequence: `prompt_ids[i]` (P_i,), and `response_ids[i]`,
    `rollout_logprobs[i]`, `loss_mask[i]` all (R_i,). `advantages` and `versions` are (B,).
    """

    run_id: str
    step: int
    prompt_ids: list[np.ndarray]
    response_ids: list[np.ndarray]
    rollout_logprobs: list[np.ndarray]
    loss_mask: list[np.ndarray]
    advantages: np.ndarray
    versions: np.ndarray
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_sequences(self) -> int:
        return len(self.response_ids)

    @property
    def num_loss_tokens(self) -> int:
        return int(sum(int(np.asarray(m).sum()) for m in self.loss_mask))

    def validate(self) -> None:
        """Raise BatchFormatError naming the field when the parts do not fit together."""
        n = len(self.response_ids)
        if n == 0:
            raise self._error("response_ids", "is empty: a batch needs at least one sequence")
        for name in ("prompt_ids", "rollout_logprobs", "loss_mask"):
            if len(getattr(self, name)) != n:
                raise self._error(name, f"has {len(getattr(self, name))} sequences, expected {n}")
        for name in ("advantages", "versions"):
            if np.asarray(getattr(self, name)).shape != (n,):
                raise self._error(name, f"has shape {np.asarray(getattr(self, name)).shape}, expected ({n},)")
        for i in range(n):
            length = len(self.response_ids[i])
            for name in ("rollout_logprobs", "loss_mask"):
                if len(getattr(self, name)[i]) != length:
                    raise self._error(
                        name, f"sequence {i} has {len(getattr(self, name)[i])} entries, expected {length}"
                    )
            if len(self.prompt_ids[i]) == 0:
                raise self._error("prompt_ids", f"sequence {i} is empty")
        if not np.all(np.isfinite(np.asarray(self.advantages, dtype=np.float64))):
            raise self._error("advantages", "holds a non-finite value")

    def _error(self, name: str, what: str) -> BatchFormatError:
        return BatchFormatError(f"batch {self.batch_id}: field '{name}' {what}")

    def to_fields(self) -> dict[str, bytes]:
        """The Redis Stream entry for this batch."""
        arrays: dict[str, np.ndarray] = {}
        arrays["prompt_ids"], arrays["prompt_offsets"] = _flatten(self.prompt_ids, np.int32)
        arrays["response_ids"], arrays["response_offsets"] = _flatten(self.response_ids, np.int32)
        arrays["rollout_logprobs"], _ = _flatten(self.rollout_logprobs, np.float32)
        arrays["loss_mask"], _ = _flatten(self.loss_mask, np.uint8)
        arrays["advantages"] = np.asarray(self.advantages, dtype=np.float32)
        arrays["versions"] = np.asarray(self.versions, dtype=np.int64)
        meta = {
            "format": FORMAT_VERSION,
            "batch_id": self.batch_id,
            "run_id": self.run_id,
            "step": str(self.step),
            "metadata": json.dumps(self.metadata),
        }
        return {
            "batch_id": self.batch_id.encode(),
            "run_id": self.run_id.encode(),
            "payload": st_save(arrays, metadata=meta),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes | str, bytes | str]) -> TrainBatch:
        """Decode a stream entry; BatchFormatError (naming the batch and field) if it is malformed."""
        norm = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        batch_id = norm.get("batch_id", b"?")
        batch_id = batch_id.decode(errors="replace") if isinstance(batch_id, bytes) else str(batch_id)
        payload = norm.get("payload")
        if not isinstance(payload, bytes | bytearray):
            raise BatchFormatError(f"batch {batch_id}: field 'payload' is missing")
        try:
            arrays = st_load(bytes(payload))
            meta = _read_metadata(bytes(payload))
        except Exception as exc:  # a corrupt buffer is bad input, named as such
            raise BatchFormatError(
                f"batch {batch_id}: field 'payload' is not a safetensors buffer: {exc}"
            ) from None
        if meta.get("format") != FORMAT_VERSION:
            raise BatchFormatError(
                f"batch {batch_id}: field 'format' is {meta.get('format')!r}, expected '1'"
            )
        needed = (
            "prompt_ids",
            "prompt_offsets",
            "response_ids",
            "response_offsets",
            "rollout_logprobs",
            "loss_mask",
            "advantages",
            "versions",
        )
        for name in needed:
            if name not in arrays:
                raise BatchFormatError(f"batch {batch_id}: field '{name}' is missing")
        for flat, offsets in (("prompt_ids", "prompt_offsets"), ("response_ids", "response_offsets")):
            off = arrays[offsets]
            if (
                off.ndim != 1
                or len(off) == 0
                or off[0] != 0
                or np.any(np.diff(off) < 0)
                or off[-1] != len(arrays[flat])
            ):
                raise BatchFormatError(f"batch {batch_id}: field '{offsets}' does not index '{flat}'")
        for name in ("rollout_logprobs", "loss_mask"):
            if len(arrays[name]) != len(arrays["response_ids"]):
                raise BatchFormatError(
                    f"batch {batch_id}: field '{name}' has {len(arrays[name])} entries, "
                    f"expected {len(arrays['response_ids'])}"
                )
        return cls(
            run_id=meta.get("run_id", ""),
            step=int(meta.get("step", "0")),
            prompt_ids=_split(arrays["prompt_ids"], arrays["prompt_offsets"]),
            response_ids=_split(arrays["response_ids"], arrays["response_offsets"]),
            rollout_logprobs=_split(arrays["rollout_logprobs"], arrays["response_offsets"]),
            loss_mask=_split(arrays["loss_mask"], arrays["response_offsets"]),
            advantages=arrays["advantages"],
            versions=arrays["versions"],
            batch_id=meta.get("batch_id", batch_id),
            metadata=json.loads(meta.get("metadata", "{}")),
        )


def _read_metadata(payload: bytes) -> dict[str, str]:
    return dict(parse_header(payload)[0].get("__metadata__", {}))

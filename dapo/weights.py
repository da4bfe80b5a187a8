"""The weights contract in code: encode a policy version into manifest + chunk messages, and
reassemble and verify it on the receiving side.

A sender yields a `WeightManifest` (every tensor's name, dtype, shape, byte size and CRC-32, and the run
the version belongs to: every run counts its versions from 0, so a policy is a (run_id, version) pair),
then `TensorChunk`s of at most `chunk_bytes` each. `WeightAssembler` accepts messages one by one and only
returns tensors from `finish()` once every tensor arrived whole with a matching checksum; any problem
raises `WeightUpdateError` naming the tensor and what was wrong, and nothing is returned.
The torch helpers import torch lazily so that this module imports without it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dapo.dtypes import DTYPES, name_of, torch_dtype
from dapo.v1 import weights_pb2

if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_BYTES = 4 << 20


class WeightUpdateError(ValueError):
    """A weight update that cannot be applied; the message names the tensor and the problem."""


@dataclass(frozen=True)
class TensorBytes:
    """One tensor as raw little-endian C-order bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: memoryview

    @property
    def num_bytes(self) -> int:
        return self.data.nbytes


def numel(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def num_chunks_of(num_bytes: int, chunk_bytes: int) -> int:
    """How many chunk messages carry a tensor of `num_bytes` (an empty tensor still sends one)."""
    return -(-max(num_bytes, 1) // chunk_bytes)


def build_manifest(
    version: int, tensors: Iterable[TensorBytes], chunk_bytes: int, *, run_id: str = ""
) -> weights_pb2.WeightManifest:
    """The manifest of one version: every tensor's spec and CRC-32 (one pass over all the bytes)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    tensors = list(tensors)
    specs = [
        weights_pb2.TensorSpec(
            name=t.name, dtype=t.dtype, shape=list(t.shape), num_bytes=t.num_bytes, crc32=zlib.crc32(t.data)
        )
        for t in tensors
    ]
    return weights_pb2.WeightManifest(
        version=version,
        tensors=specs,
        total_bytes=sum(t.num_bytes for t in tensors),
        run_id=run_id,
        num_chunks=sum(num_chunks_of(t.num_bytes, chunk_bytes) for t in tensors),
    )


def encode_update(
    version: int,
    tensors: Iterable[TensorBytes],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    *,
    run_id: str = "",
) -> Iterator[weights_pb2.WeightUpdateMessage]:
    """Yield the manifest, then each tensor's chunks, for one policy version of run `run_id`."""
    tensors = list(tensors)
    yield weights_pb2.WeightUpdateMessage(
        manifest=build_manifest(version, tensors, chunk_bytes, run_id=run_id)
    )
    for t in tensors:
        data = t.data.cast("B")
        for offset in range(0, max(t.num_bytes, 1), chunk_bytes):
            yield weights_pb2.WeightUpdateMessage(
                chunk=weights_pb2.TensorChunk(
                    version=version,
                    name=t.name,
                    offset=offset,
                    data=bytes(data[offset : offset + chunk_bytes]),
                )
            )


class WeightAssembler:
    """Collects one version's messages; `finish()` returns the verified tensors or raises.

    `expected` maps each tensor name the receiver's model has to its (dtype, shape); when given,
    the manifest must name exactly those tensors with those dtypes and shapes.
    """

    def __init__(self, expected: Mapping[str, tuple[str, tuple[int, ...]]] | None = None) -> None:
        self.expected = dict(expected) if expected is not None else None
        self.version: int | None = None
        self.run_id = ""
        self.specs: dict[str, weights_pb2.TensorSpec] = {}
        self.buffers: dict[str, bytearray] = {}
        self.received: dict[str, int] = {}
        # CRC-32 of each tensor's bytes so far, while its chunks arrive in order (computed on the chunk just
        # copied, still in cache, instead of in a second pass over the whole version); None once out of order
        self._running_crc: dict[str, int | None] = {}
        self.num_bytes = 0

    def add(self, message: weights_pb2.WeightUpdateMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "manifest":
            self._add_manifest(message.manifest)
        elif kind == "chunk":
            self._add_chunk(message.chunk)
        else:
            raise WeightUpdateError("weight update message carries neither a manifest nor a chunk")

    def _add_manifest(self, manifest: weights_pb2.WeightManifest) -> None:
        if self.version is not None:
            raise WeightUpdateError(f"version {self.version}: a second manifest arrived")
        if manifest.version < 0:
            raise WeightUpdateError(f"manifest version must be >= 0, got {manifest.version}")
        specs: dict[str, weights_pb2.TensorSpec] = {}
        for spec in manifest.tensors:
            shape = tuple(int(d) for d in spec.shape)
            if spec.name in specs:
                raise WeightUpdateError(f"tensor '{spec.name}': named twice in the manifest")
            if spec.dtype not in DTYPES:
                raise WeightUpdateError(f"tensor '{spec.name}': unsupported dtype '{spec.dtype}'")
            if any(d < 0 for d in shape) or numel(shape) * DTYPES[spec.dtype].item_size != spec.num_bytes:
                raise WeightUpdateError(
                    f"tensor '{spec.name}': {spec.num_bytes} bytes do not fit shape {list(shape)} of {spec.dtype}"
                )
            if self.expected is not None:
                if spec.name not in self.expected:
                    raise WeightUpdateError(f"tensor '{spec.name}': unknown to the model")
                want_dtype, want_shape = self.expected[spec.name]
                if tuple(want_shape) != shape:
                    raise WeightUpdateError(
                        f"tensor '{spec.name}': shape {list(shape)}, the model expects {list(want_shape)}"
                    )
                if want_dtype != spec.dtype:
                    raise WeightUpdateError(
                        f"tensor '{spec.name}': dtype {spec.dtype}, the model expects {want_dtype}"
                    )
            specs[spec.name] = spec
        if self.expected is not None:
            missing = sorted(set(self.expected) - set(specs))
            if missing:
                more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
                raise WeightUpdateError(f"tensor '{missing[0]}'{more}: missing from the manifest")
        self.version = manifest.version
        self.run_id = manifest.run_id
        self.specs = specs
        self.buffers = {name: bytearray(spec.num_bytes) for name, spec in specs.items()}
        self.received = dict.fromkeys(specs, 0)
        self._running_crc = dict.fromkeys(specs, 0)

    def _add_chunk(self, chunk: weights_pb2.TensorChunk) -> None:
        if self.version is None:
            raise WeightUpdateError(f"tensor '{chunk.name}': chunk arrived before the manifest")
        if chunk.version != self.version:
            raise WeightUpdateError(
                f"tensor '{chunk.name}': chunk of version {chunk.version} inside the update to {self.version}"
            )
        if chunk.name not in self.specs:
            raise WeightUpdateError(f"tensor '{chunk.name}': not in the manifest")
        buf = self.buffers[chunk.name]
        end = chunk.offset + len(chunk.data)
        if chunk.offset < 0 or end > len(buf):
            raise WeightUpdateError(
                f"tensor '{chunk.name}': chunk [{chunk.offset}, {end}) outside its {len(buf)} bytes"
            )
        buf[chunk.offset : end] = chunk.data
        running = self._running_crc[chunk.name]
        if running is not None and chunk.offset == self.received[chunk.name]:
            self._running_crc[chunk.name] = zlib.crc32(chunk.data, running)
        else:
            self._running_crc[chunk.name] = None
        self.received[chunk.name] += len(chunk.data)
        self.num_bytes += len(chunk.data)

    def finish(self) -> dict[str, TensorBytes]:
        """Verify completeness and checksums; return the tensors of the version."""
        if self.version is None:
            raise WeightUpdateError("the update stream ended before its manifest")
        for name, spec in self.specs.items():
            if self.received[name] != spec.num_bytes:
                raise WeightUpdateError(
                    f"tensor '{name}': received {self.received[name]} of {spec.num_bytes} bytes "
                    "(the stream stopped early or repeated a chunk)"
                )
            crc = self._running_crc[name]
            if crc is None:
                crc = zlib.crc32(self.buffers[name])
            if crc != spec.crc32:
                raise WeightUpdateError(
                    f"tensor '{name}': checksum {crc:08x} does not match {spec.crc32:08x}"
                )
        return {
            name: TensorBytes(
                name, spec.dtype, tuple(int(d) for d in spec.shape), memoryview(self.buffers[name])
            )
            for name, spec in self.specs.items()
        }


# --- torch helpers (lazy import) -------------------------------------------------------------------


def tensors_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> list[TensorBytes]:
    """Raw bytes of each tensor (moved to CPU, made contiguous), without a further copy."""
    import torch

    out = []
    for name, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        try:
            dtype = name_of(t.dtype)
        except ValueError:
            raise WeightUpdateError(f"tensor '{name}': unsupported dtype {t.dtype}") from None
        raw = t.reshape(-1).view(torch.uint8).numpy()
        out.append(TensorBytes(name, dtype, tuple(t.shape), memoryview(raw.data)))
    return out


def state_dict_from_tensors(tensors: Mapping[str, TensorBytes]) -> dict[str, torch.Tensor]:
    """Torch tensors viewing the received bytes (no copy)."""
    import torch

    out = {}
    for name, t in tensors.items():
        flat = (
            torch.frombuffer(t.data, dtype=torch.uint8) if t.num_bytes else torch.zeros(0, dtype=torch.uint8)
        )
        out[name] = flat.view(torch_dtype(t.dtype)).reshape(t.shape)
    return out

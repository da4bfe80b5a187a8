"""Stage a weight update: receive, verify against the model, write it where the engine can load it.

The model's expected tensors (the Hugging Face names the trainer's state dict uses, with their dtypes and
shapes) come from the model directory's safetensors headers, or, for a directory holding only a config,
from the architecture built on the meta device. `ShmStagingAssembler` is a `WeightAssembler` whose
tensor buffers are slices of a safetensors file memory-mapped in /dev/shm: chunks land in the file the
engine loads, with no second copy. The file is laid out and its header written as soon as the manifest
is accepted (the safetensors format is a JSON header followed by the raw bytes, so no library call can
write a header first and fill the data later). Nothing touches the engine here; `WeightUpdater` runs
one update at a time and hands a fully verified directory to the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dapo.v1 import weights_pb2
from dapo.weights import WeightAssembler, WeightUpdateError

if TYPE_CHECKING:
    from dapo_rollout.metrics import RolloutMetrics

log = logging.getLogger(__name__)

ExpectedSpecs = dict[str, tuple[str, tuple[int, ...]]]

SAFETENSORS_DTYPES = {
    "float32": "F32",
    "bfloat16": "BF16",
    "float16": "F16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "uint8": "U8",
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
STAGED_FILE = "model.safetensors"


class StaleVersionError(Exception):
    """An update to a version older than the one served, of the same run (mapped to FAILED_PRECONDITION)."""


def default_staging_root() -> str:
    """/dev/shm when it exists (the reload then reads from memory), else the temp directory."""
    return (
        "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    )


def expected_specs_from_dir(model_dir: str | Path, dtype: str | None = None) -> ExpectedSpecs:
    """Names, dtypes and shapes of the tensors a weight update for this model must carry.

    Read from the safetensors files' headers when the directory has any; otherwise built from
    `config.json` on the meta device in `dtype` (default: the config's dtype, else float32).
    """
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        specs: ExpectedSpecs = {}
        for path in files:
            for name, entry in _read_safetensors_header(path).items():
                if name == "__metadata__":
                    continue
                if entry["dtype"] not in DTYPE_NAMES:
                    raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {entry['dtype']}")
                specs[name] = (DTYPE_NAMES[entry["dtype"]], tuple(int(d) for d in entry["shape"]))
        return specs
    return _expected_specs_from_config(model_dir, dtype)


def _read_safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def _expected_specs_from_config(model_dir: Path, dtype: str | None) -> ExpectedSpecs:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None or dtype == "auto":
        dtype = str(config_dtype).removeprefix("torch.") if config_dtype is not None else "float32"
    if dtype not in SAFETENSORS_DTYPES:
        raise ValueError(f"--dtype {dtype}: expected one of {', '.join(SAFETENSORS_DTYPES)}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    specs = {name: (dtype, tuple(t.shape)) for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        specs.pop("lm_head.weight", None)  # tied: the checkpoint (and the trainer) leave it out
    return specs


class ShmStagingAssembler(WeightAssembler):
    """A `WeightAssembler` writing straight into a safetensors file in a fresh staging directory."""

    def __init__(self, expected: Mapping[str, tuple[str, tuple[int, ...]]], staging_root: str) -> None:
        super().__init__(expected)
        self.staging_root = staging_root
        self.directory: str | None = None
        self._file_map: mmap.mmap | None = None
        self._views: list[memoryview] = []

    def _add_manifest(self, manifest: weights_pb2.WeightManifest) -> None:
        super()._add_manifest(manifest)  # validates against `expected`
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, spec in self.specs.items():
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[spec.dtype],
                "shape": [int(d) for d in spec.shape],
                "data_offsets": [offset, offset + spec.num_bytes],
            }
            offset += spec.num_bytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
        start = 8 + len(raw)
        self.directory = tempfile.mkdtemp(prefix=f"dapo-weights-v{manifest.version}-", dir=self.staging_root)
        path = os.path.join(self.directory, STAGED_FILE)
        with open(path, "wb+") as f:
            f.truncate(start + offset)
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.flush()
            # MAP_POPULATE: fault the whole file in with one call instead of page by page as chunks land
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._file_map = mmap.mmap(f.fileno(), start + offset, flags=flags)
        whole = memoryview(self._file_map)
        self._views.append(whole)
        self.buffers = {}
        position = start
        for name, spec in self.specs.items():
            view = whole[position : position + spec.num_bytes]
            self._views.append(view)
            self.buffers[name] = view  # type: ignore[assignment]
            position += spec.num_bytes

    def seal(self) -> str:
        """Verify everything (raises `WeightUpdateError`), flush the file, return its directory."""
        self.finish()
        self._close()
        assert self.directory is not None
        return self.directory

    def _close(self) -> None:
        self.buffers = {}
        for view in reversed(self._views):
            view.release()
        self._views = []
        if self._file_map is not None:
            self._file_map.close()
            self._file_map = None

    def discard(self) -> None:
        """Drop the staged files (after a failure, or once the engine has loaded them)."""
        self._close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


class WeightTarget(Protocol):
    """What the updater needs from the engine."""

    @property
    def version(self) -> int: ...

    @property
    def run_id(self) -> str: ...

    async def apply_weights(self, version: int, weights_dir: str, run_id: str = "") -> None: ...


@dataclass
class UpdateResult:
    version: int
    num_bytes: int
    duration_s: float
    is_applied: bool
    run_id: str = ""


class WeightUpdater:
    """Runs weight updates one at a time: stage and verify the whole version, then apply it.

    Versions are counted per run, so they are compared only within the run served: a version of that run
    equal to the one served is acknowledged without being applied (a re-push after a trainer restart is
    harmless); an older one raises `StaleVersionError`. Either way the rest of the stream is not read. A
    version of another run (the next run on the same servers starts again at 0) is applied whatever its
    number.
    """

    def __init__(
        self,
        target: WeightTarget,
        expected: ExpectedSpecs,
        staging_root: str | None = None,
        metrics: RolloutMetrics | None = None,
    ) -> None:
        self.target = target
        self.expected = expected
        self.staging_root = staging_root or default_staging_root()
        self.metrics = metrics
        self._lock = asyncio.Lock()

    @property
    def is_busy(self) -> bool:
        return self._lock.locked()

    async def update(self, messages: AsyncIterator[weights_pb2.WeightUpdateMessage]) -> UpdateResult:
        """Consume one update stream (manifest, then chunks) and apply it whole, or raise."""
        async with self._lock:
            return await self._update_locked(messages)

    async def _update_locked(self, messages: AsyncIterator[weights_pb2.WeightUpdateMessage]) -> UpdateResult:
        started = time.perf_counter()
        iterator = aiter(messages)
        try:
            first = await anext(iterator)
        except StopAsyncIteration:
            raise WeightUpdateError("the update stream ended before its manifest") from None
        if first.WhichOneof("kind") != "manifest":
            raise WeightUpdateError("the update stream must start with its manifest")
        version, run_id = first.manifest.version, first.manifest.run_id
        current, current_run = self.target.version, self.target.run_id
        if run_id == current_run:
            if version == current:
                return UpdateResult(current, 0, time.perf_counter() - started, False, current_run)
            if version < current:
                raise StaleVersionError(
                    f"version {version} is older than the served version {current} (run '{run_id}')"
                )
        elif current >= 0:
            log.info(
                "weights of run '%s' (version %d) replace those of run '%s' (version %d)",
                run_id,
                version,
                current_run,
                current,
            )
        assembler = ShmStagingAssembler(self.expected, self.staging_root)
        try:
            assembler.add(first)
            async for message in iterator:
                assembler.add(message)
            received = time.perf_counter()
            weights_dir = assembler.seal()
            verified = time.perf_counter()
            apply = asyncio.ensure_future(self.target.apply_weights(version, weights_dir, run_id))
            try:
                await asyncio.shield(apply)
            except asyncio.CancelledError:
                await apply  # a caller gone mid-swap must not leave the engine half reloaded
                raise
        finally:
            assembler.discard()
        duration = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_update(assembler.num_bytes, duration, version)
        log.info(
            "applied weights version %d of run '%s' (%d bytes) in %.2f s: received %.2f s, verified %.2f s, "
            "swapped %.2f s",
            version,
            run_id,
            assembler.num_bytes,
            duration,
            received - started,
            verified - received,
            duration - (verified - started),
        )
        return UpdateResult(version, assembler.num_bytes, duration, True, run_id)

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
import logging
import mmap
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc

from dapo.dtypes import DTYPES, from_safetensors, item_size, safetensors_code
from dapo.safetensors_header import encode_header, read_header
from dapo.v1 import weights_pb2
from dapo.weights import WeightAssembler, WeightUpdateError, numel
from dapo_rollout.relay import Downstream, error_text, report_to_publisher, resume_frames

if TYPE_CHECKING:
    from dapo_rollout.metrics import RolloutMetrics

log = logging.getLogger(__name__)

ExpectedSpecs = dict[str, tuple[str, tuple[int, ...]]]

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
            for name, entry in read_header(path)[0].items():
                if name == "__metadata__":
                    continue
                try:
                    dtype_name = from_safetensors(entry["dtype"])
                except ValueError as exc:
                    raise ValueError(f"{path}: tensor '{name}': {exc}") from None
                specs[name] = (dtype_name, tuple(int(d) for d in entry["shape"]))
        return specs
    return _expected_specs_from_config(model_dir, dtype)


def _expected_specs_from_config(model_dir: Path, dtype: str | None) -> ExpectedSpecs:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if dtype is None or dtype == "auto":
        dtype = str(config_dtype).removeprefix("torch.") if config_dtype is not None else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    specs = {name: (dtype, tuple(t.shape)) for name, t in model.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        specs.pop("lm_head.weight", None)  # tied: the checkpoint (and the trainer) leave it out
    return specs


class StagingFile:
    """The safetensors file in /dev/shm that every update of one server is staged in.

    Its layout follows the model's expected tensors (not the order of a manifest, which must name the
    same tensors anyway), so one file serves every update: its pages are allocated and faulted in once,
    when the file is made, instead of at every update (on this kind of machine touching fresh pages cost
    more than receiving the bytes). The file holds no served state: the engine has copied what it serves,
    so an update that fails halfway leaves only scratch bytes here. Updates must not overlap (the
    `WeightUpdater` lock sees to that). The directory is named after the server's process id; one left
    behind by a process that no longer runs is removed when the next one is made.
    """

    PREFIX = "dapo-weights-"

    def __init__(self, expected: Mapping[str, tuple[str, tuple[int, ...]]], root: str) -> None:
        self.root = root
        self.offsets: dict[str, tuple[int, int]] = {}
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, (dtype, shape) in expected.items():
            num_bytes = item_size(dtype) * numel(shape)
            header[name] = {
                "dtype": safetensors_code(dtype),
                "shape": [int(d) for d in shape],
                "data_offsets": [offset, offset + num_bytes],
            }
            self.offsets[name] = (offset, num_bytes)
            offset += num_bytes
        self._header = encode_header(header)
        self.size = len(self._header) + offset
        self.directory: str | None = None
        self._map: mmap.mmap | None = None

    def open(self) -> None:
        """Make the file and fault all its pages in (a no-op once made)."""
        if self._map is not None:
            return
        _remove_orphans(self.root, self.PREFIX)
        self.directory = tempfile.mkdtemp(prefix=f"{self.PREFIX}{os.getpid()}-", dir=self.root)
        with open(os.path.join(self.directory, STAGED_FILE), "wb+") as f:
            f.truncate(self.size)
            f.write(self._header)
            f.flush()
            # MAP_POPULATE: fault the whole file in with one call instead of page by page as chunks land
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self._map = mmap.mmap(f.fileno(), self.size, flags=flags)

    def views(self) -> dict[str, memoryview]:
        """A writable view of each tensor's bytes in the file; release them before `close`."""
        self.open()
        assert self._map is not None
        whole = memoryview(self._map)
        start = len(self._header)
        views = {name: whole[start + o : start + o + n] for name, (o, n) in self.offsets.items()}
        whole.release()
        return views

    def close(self) -> None:
        """Unmap and delete the file."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


def _remove_orphans(root: str, prefix: str) -> None:
    """Remove staging directories of processes that no longer run (a server killed before its clean-up)."""
    for entry in Path(root).glob(f"{prefix}*"):
        pid = entry.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _is_running(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # running, another user's
        return True
    return True


class ShmStagingAssembler(WeightAssembler):
    """A `WeightAssembler` writing straight into a `StagingFile` (no copy between receiving and loading)."""

    def __init__(self, expected: Mapping[str, tuple[str, tuple[int, ...]]], staging: StagingFile) -> None:
        super().__init__(expected)
        self.staging = staging
        self._views: list[memoryview] = []

    def _add_manifest(self, manifest: weights_pb2.WeightManifest) -> None:
        super()._add_manifest(manifest)  # validates against `expected`: the file's layout fits
        views = self.staging.views()
        self._views = list(views.values())
        self.buffers = {name: views[name] for name in self.specs}  # type: ignore[misc]

    def seal(self) -> str:
        """Verify everything (raises `WeightUpdateError`); return the directory of the staged file."""
        self.finish()
        self.release()
        assert self.staging.directory is not None
        return self.staging.directory

    def release(self) -> None:
        """Let go of the file's memory (after a failure, or once the engine has loaded it)."""
        self.buffers = {}
        for view in self._views:
            view.release()
        self._views = []


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
    relayed: list[weights_pb2.RelayOutcome] = field(default_factory=list)
    """With a relay plan: this server's outcome, then those of the servers behind it."""


Frame = bytes | weights_pb2.WeightUpdateMessage


def _parse(item: Frame) -> tuple[weights_pb2.WeightUpdateMessage, bytes]:
    """A stream item as a message and as the bytes to forward (gRPC hands the servicer raw bytes)."""
    if isinstance(item, bytes | bytearray | memoryview):
        raw = bytes(item)
        return weights_pb2.WeightUpdateMessage.FromString(raw), raw
    return item, item.SerializeToString()


class WeightUpdater:
    """Runs weight updates one at a time: stage and verify the whole version, then apply it.

    Versions are counted per run, so they are compared only within the run served: a version of that run
    equal to the one served is acknowledged without being applied (a re-push after a trainer restart is
    harmless); an older one raises `StaleVersionError`. Either way the rest of the stream is not read. A
    version of another run (the next run on the same servers starts again at 0) is applied whatever its
    number.

    A stream whose manifest carries a relay plan is also forwarded, message by message as it arrives, to
    the children the plan names (dapo_rollout.relay), whatever this server does with its own copy; its
    result is then an outcome per server instead of an error. If such a stream breaks or stalls before its
    last chunk, the rest is resumed from the publisher at `publisher_address` and still forwarded, and the
    outcomes go to the publisher (`ReportRelay`), since the upstream that would carry the reply is gone.
    """

    def __init__(
        self,
        target: WeightTarget,
        expected: ExpectedSpecs,
        staging_root: str | None = None,
        metrics: RolloutMetrics | None = None,
        publisher_address: str | None = None,
        relay_timeout_s: float = 600.0,
    ) -> None:
        self.target = target
        self.expected = expected
        self.staging = StagingFile(expected, staging_root or default_staging_root())
        self.metrics = metrics
        self.publisher_address = publisher_address
        self.relay_timeout_s = relay_timeout_s
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Make the staging file now (a second or so per GB) rather than during the first update."""
        async with self._lock:
            await asyncio.to_thread(self.staging.open)

    async def close(self) -> None:
        """Delete the staging file; waits for an update in progress."""
        async with self._lock:
            self.staging.close()

    @property
    def is_busy(self) -> bool:
        return self._lock.locked()

    async def update(self, messages: AsyncIterator[Frame]) -> UpdateResult:
        """Consume one update stream (manifest, then chunks) and apply it whole, or raise."""
        downstream: Downstream | None = None
        async with self._lock:
            iterator = aiter(messages)
            started = time.perf_counter()
            try:
                first, _ = _parse(await anext(iterator))
            except StopAsyncIteration:
                raise WeightUpdateError("the update stream ended before its manifest") from None
            if first.WhichOneof("kind") != "manifest":
                raise WeightUpdateError("the update stream must start with its manifest")
            if not first.manifest.HasField("relay"):
                return await self._update_locked(first, iterator, started)
            downstream = Downstream(first.manifest.relay, self.relay_timeout_s)
            try:
                result, relayed = await self._relay_locked(first.manifest, iterator, downstream, started)
            except BaseException:
                await downstream.finish(is_complete=False)  # the children resume by themselves
                raise
        result.relayed += await downstream.finish(relayed.is_complete)
        if relayed.is_orphaned and self.publisher_address:
            await report_to_publisher(self.publisher_address, result.run_id, result.version, result.relayed)
        return result

    def _check_order(self, version: int, run_id: str) -> bool:
        """True to apply; False for the version already served; raises for an older one of the same run."""
        current, current_run = self.target.version, self.target.run_id
        if run_id == current_run:
            if version == current:
                return False
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
        return True

    async def _update_locked(
        self,
        first: weights_pb2.WeightUpdateMessage,
        iterator: AsyncIterator[Frame],
        started: float,
    ) -> UpdateResult:
        version, run_id = first.manifest.version, first.manifest.run_id
        if not self._check_order(version, run_id):
            return UpdateResult(version, 0, time.perf_counter() - started, False, run_id)
        assembler = ShmStagingAssembler(self.expected, self.staging)
        try:
            assembler.add(first)
            async for item in iterator:
                assembler.add(_parse(item)[0])
            received = time.perf_counter()
            return await self._apply(assembler, version, run_id, started, received)
        finally:
            assembler.release()

    async def _apply(
        self, assembler: ShmStagingAssembler, version: int, run_id: str, started: float, received: float
    ) -> UpdateResult:
        """Verify the staged version whole and hand it to the engine."""
        weights_dir = assembler.seal()
        verified = time.perf_counter()
        apply = asyncio.ensure_future(self.target.apply_weights(version, weights_dir, run_id))
        try:
            await asyncio.shield(apply)
        except asyncio.CancelledError:
            await apply  # a caller gone mid-swap must not leave the engine half reloaded
            raise
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

    async def _relay_locked(
        self,
        manifest: weights_pb2.WeightManifest,
        iterator: AsyncIterator[Frame],
        downstream: Downstream,
        started: float,
    ) -> tuple[UpdateResult, RelayProgress]:
        """Stage this server's copy while forwarding every message downstream; resume from the publisher
        if the upstream breaks. Never raises for this server's own refusal: it becomes its outcome."""
        plan = manifest.relay
        version, run_id = manifest.version, manifest.run_id
        progress = RelayProgress(source="upstream")
        state = _RelayState(source=iterator)
        self._start_staging(manifest, state)
        await downstream.open(manifest)
        try:
            await self._relay_chunks(manifest, state, downstream, progress)
            received = time.perf_counter()
            result = UpdateResult(version, 0, received - started, False, run_id)
            if state.assembler is not None and state.own_error is None:
                try:
                    result = await self._apply(state.assembler, version, run_id, started, received)
                except WeightUpdateError as exc:
                    state.own_error = str(exc)
        except (grpc.aio.AioRpcError, ValueError) as exc:  # the resumed stream failed too
            state.own_error = state.own_error or f"resuming from the publisher failed: {error_text(exc)}"
            progress.is_complete = False
            result = UpdateResult(version, 0, time.perf_counter() - started, False, run_id)
        finally:
            state.drop_staging()
            await _close(state.source)
        is_served = state.own_error is None
        if not is_served:
            log.warning("version %d of run '%s' not applied here: %s", version, run_id, state.own_error)
        result.relayed.append(
            weights_pb2.RelayOutcome(
                address=plan.address,
                is_served=is_served,
                source=progress.source if result.is_applied else ("already served" if is_served else ""),
                error=state.own_error or "",
            )
        )
        return result, progress

    def _start_staging(self, manifest: weights_pb2.WeightManifest, state: _RelayState) -> None:
        """Stage the manifest when this server is to apply the version; else record why it does not."""
        try:
            if self._check_order(manifest.version, manifest.run_id):
                state.assembler = ShmStagingAssembler(self.expected, self.staging)
                state.assembler.add(weights_pb2.WeightUpdateMessage(manifest=manifest))
        except (StaleVersionError, WeightUpdateError) as exc:
            state.own_error = str(exc)
            state.drop_staging()

    async def _relay_chunks(
        self,
        manifest: weights_pb2.WeightManifest,
        state: _RelayState,
        downstream: Downstream,
        progress: RelayProgress,
    ) -> None:
        """Read and forward every chunk: from the upstream, then, each time a stream breaks early, from
        the publisher (at most MAX_RESUMES times; after that the update is incomplete here)."""
        stall_s = downstream.stall_s
        while True:
            broke = await _forward_until_break(state, downstream, progress, manifest.num_chunks, stall_s)
            if progress.num_chunks >= manifest.num_chunks or manifest.num_chunks == 0:
                return
            # The upstream is gone (or stalled): the rest comes from the publisher, still relayed.
            progress.is_orphaned = True
            if not self.publisher_address or progress.num_resumes >= MAX_RESUMES:
                state.own_error = state.own_error or f"{broke}; no resume from the publisher possible"
                progress.is_complete = False
                return
            log.warning(
                "version %d: %s; resuming from the publisher %s",
                manifest.version,
                broke,
                self.publisher_address,
            )
            progress.num_resumes += 1
            progress.source = f"publisher, resumed at chunk {progress.num_chunks} ({broke})"
            await _close(state.source)
            state.source = resume_frames(
                self.publisher_address,
                manifest,
                progress.num_chunks,
                manifest.relay.address,
                self.relay_timeout_s,
            )


MAX_RESUMES = 2


@dataclass
class RelayProgress:
    source: str
    num_chunks: int = 0
    num_resumes: int = 0
    is_orphaned: bool = False  # the upstream broke: nobody is waiting for this reply
    is_complete: bool = True  # every chunk arrived (and went downstream)


@dataclass
class _RelayState:
    """What the steps of one relayed update share."""

    source: AsyncIterator[Frame]
    """The stream read now: the upstream, or a resume from the publisher."""
    assembler: ShmStagingAssembler | None = None
    """This server's staging of the version; None when it does not apply it."""
    own_error: str | None = None
    """Why this server does not serve the version."""

    def stage(self, message: weights_pb2.WeightUpdateMessage) -> None:
        if self.assembler is not None:
            try:
                self.assembler.add(message)
            except WeightUpdateError as exc:
                self.own_error = str(exc)
                self.drop_staging()

    def drop_staging(self) -> None:
        if self.assembler is not None:
            self.assembler.release()
            self.assembler = None


async def _forward_until_break(
    state: _RelayState, downstream: Downstream, progress: RelayProgress, num_chunks: int, stall_s: float
) -> str:
    """Stage and forward chunks from `state.source` until it ends, fails or stalls; returns how it broke.
    Cancellation of the task itself propagates; a read of a cancelled call is a failed upstream."""
    try:
        while True:
            item = await asyncio.wait_for(anext(state.source), stall_s)
            message, raw = _parse(item)
            state.stage(message)
            await downstream.send(raw)
            progress.num_chunks += 1
    except StopAsyncIteration:
        return f"the stream ended after {progress.num_chunks} of {num_chunks} chunks"
    except (grpc.aio.AioRpcError, asyncio.TimeoutError, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and _is_cancelled():
            raise
        return f"the upstream failed after {progress.num_chunks} chunks: {error_text(exc)}"


async def _close(source: AsyncIterator[Frame]) -> None:
    """Close the stream read last, once done with it (a resumed one holds a channel to the publisher)."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


def _is_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not merely a read of a cancelled call)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

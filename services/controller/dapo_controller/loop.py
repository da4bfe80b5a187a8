"""The DAPO loop of one run: dataset -> rollout -> reward -> dynamic sampling -> advantages -> batch queue.

Everything the loop needs to continue after a controller restart lives in Redis: the dataset cursor
and the next step are written in the same transaction as the TrainBatch they produced, so a batch is
never queued twice nor skipped. Staleness is bounded by waiting, before generating step s, until the
trainer has applied batch s - max_staleness - 1 (its policy version is at least s - max_staleness) and
by dropping any sample whose policy version is older than that. Policy versions count per run (each run's
trainer starts at 0 on the same rollout servers), so rollout servers are used only while they serve this
run's weights, and a sample generated under another run's weights is dropped like a stale one.

Every wait has a deadline from `services.*` and, when it does not end at once, a `waiting` event that
says what the run waits for and until when. The run fails, with the reason, when the trainer is silent
past `trainer_restart_timeout_s`, heartbeats without applying a batch for `trainer_progress_timeout_s`,
rejects a batch (its dead-letter stream) or reports an exception (`keys.trainer_error`), and when no
rollout server serves the needed version for `rollout_timeout_s` (servers that restart are waited for).
Redis outages are retried by the client (ControllerSettings.redis_retry_s); a Redis that came back
without this run's state (restarted without persistence) fails the run with a message saying so,
never a silent start from step 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import redis.asyncio as aioredis
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from dapo import keys
from dapo.batch import TrainBatch
from dapo.config import RunConfig, parse_config
from dapo.config.schema import MathEnvConfig
from dapo.data import PromptCursor, PromptRow, load_from_config
from dapo.prompts import render_text
from dapo.records import RunStatus
from dapo.stream_limits import StreamLimits
from dapo.v1 import reward_pb2, reward_pb2_grpc, rollout_pb2
from dapo_controller.groups import (
    Group,
    Sample,
    build_train_batch,
    overlong_metrics,
    sample_metrics,
    select_groups,
)
from dapo_controller.reward_client import reward_channel
from dapo_controller.rollout_pool import NoHealthyServerError, RolloutPool
from dapo_controller.rollout_registry import RolloutRegistry
from dapo_controller.store import RunStore

log = logging.getLogger(__name__)
POLL_S = 0.2
VERSION_POLL_S = 0.02
"""How often a wait for the trainer reads its policy version (one GET): in an asynchronous run the next
generation starts on that version, so a coarse poll would leave the rollout servers idle each step. The
fault checks of the wait (stop, dead letters, heartbeat) still run every POLL_S."""
WAIT_NOTICE_S = 2.0  # a wait still unfinished after this long gets a `waiting` event
LOST_STATE = (
    "Redis lost this run's state (its record or loop state is gone: was Redis restarted without "
    "persistence?); the run cannot resume"
)

# KEYS: batch stream, loop-state hash; ARGV: expected step, next step, cursor JSON, then the batch's
# field/value pairs. Queues the batch and advances the loop state in one step, only if the loop state
# still says `expected step` (missing counts as step 0): a command retried after a dropped connection
# never queues a batch twice, and a Redis that lost the loop state is noticed. Returns 1 (queued),
# 2 (already queued: the state says `next step`) or 0 (the state is neither).
_COMMIT_BATCH = """
local step = redis.call('HGET', KEYS[2], 'step') or '0'
if step == ARGV[2] then return 2 end
if step ~= ARGV[1] then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'step', ARGV[2], 'cursor', ARGV[3])
return 1
"""


class RunStopped(Exception):
    """The user asked the run to stop."""


class RunFailed(RuntimeError):
    """The run cannot go on; the message is the reason shown to the user."""


@dataclass
class Endpoints:
    rollout_addresses: list[str]
    reward_address: str


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )


def epochs_done(cursor: PromptCursor, max_num_epochs: int | None) -> bool:
    """NeMo RL's grpo.max_num_epochs: true once that many passes over the prompts are complete."""
    finished = cursor.epoch + (cursor.position == len(cursor.rows))
    return max_num_epochs is not None and finished >= max_num_epochs


def score_request(math_cfg: MathEnvConfig, items: list[tuple[str, str]]) -> reward_pb2.ScoreRequest:
    """The Score call for (response, ground truth) pairs, ids their positions, under the run's
    env.math settings (math-verify's grading options only with that verifier)."""
    request = reward_pb2.ScoreRequest(
        verifier=math_cfg.verifier,
        binary=math_cfg.binary_reward,
        items=[
            reward_pb2.ScoreItem(id=str(i), response=response, ground_truth=truth)
            for i, (response, truth) in enumerate(items)
        ],
    )
    if math_cfg.verifier == "math_verify":
        request.math_verify.CopyFrom(reward_pb2.MathVerifyOptions(**math_cfg.math_verify.model_dump()))
    return request


@dataclass
class _Sampled:
    """What one step's generation rounds have gathered so far (dynamic sampling's running totals)."""

    kept: list[Group] = field(default_factory=list)
    generated: list[Group] = field(default_factory=list)
    num_all_correct: int = 0
    num_all_wrong: int = 0
    num_stale: int = 0
    num_rounds: int = 0
    num_tokens: int = 0
    time_generate: float = 0.0
    time_reward: float = 0.0


class RunLoop:
    def __init__(
        self,
        run_id: str,
        config: dict[str, Any],
        store: RunStore,
        redis: aioredis.Redis,
        endpoints: Endpoints,
    ) -> None:
        self.run_id = run_id
        self.config: RunConfig = parse_config(config)
        self.store = store
        self.redis = redis
        self.endpoints = endpoints
        self.pool: RolloutPool | None = None
        self.reward_channel: grpc.aio.Channel | None = None
        self._trainer_lost_since: float | None = None
        self._commit_batch = redis.register_script(_COMMIT_BATCH)
        self.registry = RolloutRegistry(redis, self.config.services.rollout_server_ttl_s)
        store.limit_streams(run_id, StreamLimits.of(self.config.services))

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> RunStatus:
        """Drive the run to its end; return the final status (one of TERMINAL_STATUSES)."""
        status: RunStatus
        try:
            await self._setup()
            await self._train()
            status, error = "succeeded", ""
        except RunStopped:
            status, error = "stopped", ""
        except asyncio.CancelledError:
            raise  # the controller is shutting down: the run stays `running` and resumes on restart
        except Exception as exc:  # the run's failure is reported, never swallowed
            log.exception("run %s failed", self.run_id)
            status, error = (
                "failed",
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, RunFailed) else str(exc),
            )
        finally:
            await self._close()
        if await self.store.get_run(self.run_id) is None:
            # Redis came back empty: record the failure so that the user sees why.
            status, error = "failed", LOST_STATE
            await self.store.restore_failed(self.run_id, self.config, error)
        await self.store.update_run(self.run_id, status=status, error=error, finished_at=time.time())
        await self.store.add_event(self.run_id, status, error or f"run {status}")
        await self._release_trainer()
        return status

    async def _setup(self) -> None:
        cfg = self.config
        self.train_rows = load_from_config(cfg.data, seed=cfg.grpo.seed)
        self.val_rows: list[PromptRow] = load_from_config(cfg.data, validation=True, seed=cfg.grpo.seed)
        self.pool = RolloutPool(
            self.endpoints.rollout_addresses,
            cfg.services.rpc_timeout_s,
            self._server_changed,
            run_id=self.run_id,
        )
        self.reward_channel = reward_channel(self.endpoints.reward_address)
        self.reward = reward_pb2_grpc.RewardStub(self.reward_channel)
        record = await self.store.get_run(self.run_id)
        if record is not None and record.status == "pending":
            await self.store.update_run(self.run_id, status="running", started_at=time.time())
            await self.store.add_event(self.run_id, "started", "run started; waiting for the trainer")
        else:
            await self.store.add_event(self.run_id, "resumed", "controller resumed the run")
        # The trainer pushes the run's first version to the servers it finds in Redis when it starts (they
        # may serve another run's weights: versions count per run), so register the servers that answer now
        # before assigning it; those still starting fetch the version from the trainer's publisher.
        await self.pool.probe()
        await self._refresh_registry()
        await self.redis.hset(
            keys.trainer_assignment(),
            mapping={"run_id": self.run_id, "config": json.dumps(cfg.model_dump(mode="json"))},
        )
        await self._wait_for_version(0, "the trainer to load the model")
        await self._wait_for_servers(0)

    async def _close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.reward_channel is not None:
            await self.reward_channel.close()

    async def _release_trainer(self) -> None:
        assigned = await self.redis.hget(keys.trainer_assignment(), "run_id")
        if assigned is not None and assigned.decode() == self.run_id:
            await self.redis.delete(keys.trainer_assignment())

    async def _refresh_registry(self) -> None:
        """The trainer pushes new weights to every server in the registry: those answering the probe
        just made, less those silent for services.rollout_server_ttl_s."""
        assert self.pool is not None
        for address in await self.registry.refresh(self.pool.answering()):
            await self.store.add_event(
                self.run_id,
                "rollout_pruned",
                f"rollout server {address} did not answer for {self.registry.ttl_s:.0f} s "
                "(services.rollout_server_ttl_s): no longer pushed weights",
                address=address,
            )

    def _server_changed(self, address: str, healthy: bool, reason: str) -> None:
        kind = "rollout_back" if healthy else "rollout_lost"
        asyncio.get_running_loop().create_task(
            self.store.add_event(self.run_id, kind, f"rollout server {address}: {reason}", address=address)
        )

    # --- the loop --------------------------------------------------------------------------------

    async def _load_state(self) -> tuple[int, PromptCursor]:
        state = await self.redis.hgetall(keys.controller_state(self.run_id))
        cfg = self.config
        if b"cursor" in state:
            cursor = PromptCursor.from_state(self.train_rows, json.loads(state[b"cursor"]))
            return int(state[b"step"]), cursor
        if await self._trainer_version() > 0:
            raise RunFailed(LOST_STATE)  # the trainer went on, but the loop's own state is gone
        return 0, PromptCursor(self.train_rows, seed=cfg.grpo.seed, shuffle=cfg.data.shuffle)

    async def _train(self) -> None:
        cfg = self.config
        step, cursor = await self._load_state()
        validated = {int(x) for x in await self.redis.smembers(keys.validated_steps(self.run_id))}
        while step < cfg.grpo.max_num_steps and not epochs_done(cursor, cfg.grpo.max_num_epochs):
            await self._check_stop()
            min_version = max(0, step - cfg.grpo.max_staleness)
            t0 = time.monotonic()
            await self._wait_for_version(min_version, f"the trainer to apply batch {min_version - 1}")
            wait_trainer_s = time.monotonic() - t0
            await self.store.update_run(self.run_id, policy_version=await self._trainer_version())
            if self._validation_due(step) and step not in validated:
                await self._wait_for_version(step, "the trainer before validation")
                await self._validate(step)
                validated.add(step)
            metrics = await self._make_batch(step, cursor, min_version)
            metrics["time/wait_trainer"] = wait_trainer_s
            await self.store.add_metrics(self.run_id, metrics)
            step += 1
        await self._wait_for_version(step, "the trainer to apply the last batch")
        await self.store.update_run(self.run_id, policy_version=await self._trainer_version())
        if step not in validated and self.val_rows:
            await self._validate(step)

    def _validation_due(self, step: int) -> bool:
        grpo = self.config.grpo
        if not self.val_rows:
            return False
        if step == 0:
            return grpo.val_at_start
        return grpo.val_period > 0 and step % grpo.val_period == 0

    async def _make_batch(self, step: int, cursor: PromptCursor, min_version: int) -> dict[str, Any]:
        wanted = self.config.grpo.num_prompts_per_step
        sampled = await self._sample_groups(step, cursor, min_version)
        kept = sampled.kept[:wanted]
        t_build = time.monotonic()
        batch = build_train_batch(self.run_id, step, kept, self.config)
        await self._queue_batch(step, cursor, batch)
        time_commit = time.monotonic() - t_build
        # Below `step`: the batch was queued before the trainer needed it (the trainer was kept fed).
        trainer_version_at_commit = await self._trainer_version()
        metrics = self._batch_metrics(step, kept, sampled)
        metrics.update(
            {
                "time/build_commit": time_commit,
                "queue/trainer_version_at_commit": trainer_version_at_commit,
                "queue/batch_id": batch.batch_id,
            }
        )
        return metrics

    async def _sample_groups(self, step: int, cursor: PromptCursor, min_version: int) -> _Sampled:
        """Generation rounds until dynamic sampling has kept a batch's worth of groups (at most
        grpo.dynamic_sampling_max_gen_batches rounds, else the run fails saying why)."""
        grpo = self.config.grpo
        wanted = grpo.num_prompts_per_step
        # With dynamic sampling every round over-samples a whole batch (DAPO's generation batch);
        # surplus groups are dropped. Without it, one round of exactly the batch.
        num_prompts = math.ceil(wanted * grpo.batch_multiplier) if grpo.use_dynamic_sampling else wanted
        sampled = _Sampled()
        for _ in range(grpo.dynamic_sampling_max_gen_batches):
            await self._check_stop()
            await self._generation_round(cursor.take(num_prompts), min_version, sampled)
            if len(sampled.kept) >= wanted:
                return sampled
        raise RunFailed(
            f"step {step}: dynamic sampling filled only {len(sampled.kept)} of {wanted} groups after "
            f"{grpo.dynamic_sampling_max_gen_batches} generation rounds "
            f"({sampled.num_all_correct} groups all correct, {sampled.num_all_wrong} all wrong, "
            f"{sampled.num_stale} stale); raise grpo.dynamic_sampling_max_gen_batches or grpo.batch_multiplier"
        )

    async def _generation_round(self, rows: list[PromptRow], min_version: int, sampled: _Sampled) -> None:
        """Generate and score one group per row, and add the fresh groups that dynamic sampling keeps."""
        cfg = self.config
        sampled.num_rounds += 1
        t0 = time.monotonic()
        groups = await self._generate(
            rows, cfg.grpo.num_generations_per_prompt, cfg.policy.generation.temperature
        )
        t1 = time.monotonic()
        await self._score(groups)
        t2 = time.monotonic()
        sampled.time_generate += t1 - t0
        sampled.time_reward += t2 - t1
        sampled.num_tokens += sum(len(s.token_ids) for g in groups for s in g.samples)
        fresh = [
            g for g in groups if all(s.version >= min_version and s.run_id == self.run_id for s in g.samples)
        ]
        sampled.num_stale += len(groups) - len(fresh)
        sampled.generated += groups
        selection = select_groups(fresh, cfg)
        sampled.num_all_correct += selection.num_all_correct
        sampled.num_all_wrong += selection.num_all_wrong
        sampled.kept += selection.kept

    async def _queue_batch(self, step: int, cursor: PromptCursor, batch: TrainBatch) -> None:
        """Queue `batch` and advance the loop state past `step` in one transaction."""
        fields = [x for pair in batch.to_fields().items() for x in pair]
        committed = await self._commit_batch(
            keys=[keys.batch_stream(self.run_id), keys.controller_state(self.run_id)],
            args=[step, step + 1, json.dumps(cursor.state()), *fields],
        )
        if not committed:
            raise RunFailed(f"step {step}: {LOST_STATE}")

    def _batch_metrics(self, step: int, kept: list[Group], sampled: _Sampled) -> dict[str, Any]:
        """The controller's figures for one step's batch: its samples, groups, staleness and timings."""
        generated = sampled.generated
        kept_versions = [s.version for g in kept for s in g.samples]
        metrics: dict[str, Any] = {"step": step, "source": "controller", **sample_metrics(generated)}
        metrics.update(overlong_metrics(kept, self.config))
        metrics.update(
            {
                "train/groups_generated": len(generated),
                "train/groups_kept_frac": len(kept) / max(1, len(generated)),
                "train/groups_all_correct": sampled.num_all_correct,
                "train/groups_all_wrong": sampled.num_all_wrong,
                "train/groups_stale": sampled.num_stale,
                "train/generation_rounds": sampled.num_rounds,
                "train/staleness": float(step - min(kept_versions)),
                "train/staleness_mean": float(step - sum(kept_versions) / len(kept_versions)),
                "time/generate": sampled.time_generate,
                "time/reward": sampled.time_reward,
                "gen/tokens_per_s": sampled.num_tokens / max(sampled.time_generate, 1e-9),
            }
        )
        return metrics

    async def _generate(self, rows: list[PromptRow], n: int, temperature: float) -> list[Group]:
        assert self.pool is not None
        gen = self.config.policy.generation
        sampling = rollout_pb2.SamplingParams(
            n=n,
            temperature=temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            max_tokens=gen.max_new_tokens,
            stop=gen.stop,
        )
        prompts = [self._prompt(row) for row in rows]
        results = await self._generate_waiting(prompts, sampling)
        groups = []
        for row, result in zip(rows, results, strict=True):
            group = Group(
                row_id=row.id, prompt_ids=list(result.prompt_token_ids), ground_truth=row.ground_truth
            )
            for sample in result.samples:
                group.samples.append(
                    Sample(
                        token_ids=list(sample.token_ids),
                        logprobs=list(sample.logprobs),
                        finish_reason=sample.finish_reason,
                        version=sample.policy_version,
                        text=sample.text,
                        run_id=sample.run_id,
                    )
                )
            groups.append(group)
        return groups

    def _prompt(self, row: PromptRow) -> rollout_pb2.Prompt:
        text = render_text(
            row.messages, self.config.policy.tokenizer.chat_template, self.config.data.use_chat_template
        )
        if text is not None:
            return rollout_pb2.Prompt(text=text)
        messages = [rollout_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in row.messages]
        return rollout_pb2.Prompt(chat=rollout_pb2.ChatPrompt(messages=messages))

    async def _generate_waiting(
        self, prompts: list[rollout_pb2.Prompt], sampling: rollout_pb2.SamplingParams
    ) -> list[rollout_pb2.PromptResult]:
        """Generate; when every server is out (restarting, the last one included), wait for one to
        serve the needed version again, within services.rollout_timeout_s of the first failure."""
        assert self.pool is not None
        deadline: float | None = None
        while True:
            try:
                return await self.pool.generate(prompts, sampling)
            except NoHealthyServerError as exc:
                if deadline is None:
                    deadline = time.monotonic() + self.config.services.rollout_timeout_s
                    await self.store.add_event(self.run_id, "rollout_unavailable", str(exc))
                await self._wait_for_servers(self.pool.required_version, deadline=deadline)

    async def _score(self, groups: list[Group]) -> None:
        math_cfg = self.config.env.math
        samples = [(g, s) for g in groups for s in g.samples]
        request = score_request(math_cfg, [(s.text, g.ground_truth) for g, s in samples])
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(6),
            wait=wait_exponential(multiplier=0.5, max=10),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    await self.store.add_event(
                        self.run_id,
                        "reward_retry",
                        f"reward service unavailable; retry {attempt.retry_state.attempt_number}",
                    )
                reply = await self.reward.Score(request, timeout=self.config.services.rpc_timeout_s)
        by_id = {r.id: r for r in reply.results}
        for i, (_, sample) in enumerate(samples):
            result = by_id[str(i)]
            sample.score, sample.correct = result.score, result.correct

    async def _validate(self, step: int) -> None:
        t0 = time.monotonic()
        groups = await self._generate(self.val_rows, 1, 0.0)
        await self._score(groups)
        metrics = {
            "step": step,
            "source": "validation",
            **sample_metrics(groups, prefix="val"),
            "time/validation": time.monotonic() - t0,
        }
        await self.store.add_metrics(self.run_id, metrics)
        await self.redis.sadd(keys.validated_steps(self.run_id), step)

    # --- waiting, with deadlines -------------------------------------------------------------------

    async def _check_stop(self) -> None:
        record = await self.store.get_run(self.run_id)
        if record is None:
            raise RunFailed(LOST_STATE)
        if record.stop_requested:
            raise RunStopped()

    async def _trainer_alive(self) -> bool:
        """False once the trainer has been silent past its restart timeout; events on loss and return."""
        beat = await self.redis.get(keys.trainer_heartbeat())
        now = time.monotonic()
        if beat is not None:
            if self._trainer_lost_since is not None:
                await self.store.add_event(self.run_id, "trainer_back", "trainer is back")
                self._trainer_lost_since = None
            return True
        if self._trainer_lost_since is None:
            self._trainer_lost_since = now
            await self.store.add_event(
                self.run_id, "trainer_lost", "no heartbeat from the trainer; waiting for it"
            )
        return now - self._trainer_lost_since < self.config.services.trainer_restart_timeout_s

    async def _trainer_version(self) -> int:
        raw = await self.redis.get(keys.policy_version(self.run_id))
        return int(raw) if raw is not None else -1

    async def _check_trainer_faults(self) -> None:
        """RunFailed if the trainer rejected a batch of this run or reported an exception."""
        letters = await self.redis.xrange(keys.dead_letter_stream(self.run_id), count=1)
        if letters:
            fields = letters[0][1]
            batch_id = fields.get(b"batch_id", b"?").decode(errors="replace")
            reason = fields.get(b"reason", b"").decode(errors="replace")
            raise RunFailed(
                f"the trainer rejected batch {batch_id} (dead-letter stream "
                f"{keys.dead_letter_stream(self.run_id)}): {reason}"
            )
        error = await self.redis.hgetall(keys.trainer_error(self.run_id))
        if error:
            rank = error.get(b"rank", b"?").decode()
            raise RunFailed(f"the trainer (rank {rank}) raised {error.get(b'message', b'').decode()}")

    async def _announce_wait(self, what: str, until_monotonic: float, setting: str) -> None:
        until = time.time() + (until_monotonic - time.monotonic())
        clock = time.strftime("%H:%M:%S", time.localtime(until))
        await self.store.add_event(
            self.run_id,
            "waiting",
            f"waiting for {what} until {clock} ({setting})",
            waiting_for=what,
            until=until,
        )

    async def _wait_for_version(self, version: int, what: str) -> None:
        services = self.config.services
        started = time.monotonic()
        seen = await self._trainer_version()
        progress_deadline = started + services.trainer_progress_timeout_s
        announced = False
        while (current := await self._trainer_version()) < version:
            await self._check_stop()
            await self._check_trainer_faults()
            if not await self._trainer_alive():
                raise RunFailed(
                    f"waiting for {what}: the trainer sent no heartbeat for "
                    f"{services.trainer_restart_timeout_s:.0f} s (services.trainer_restart_timeout_s) "
                    "and did not come back"
                )
            now = time.monotonic()
            if current != seen or self._trainer_lost_since is not None:
                # Progress (or a restart, which has its own deadline): the clock starts again.
                seen, progress_deadline = current, now + services.trainer_progress_timeout_s
            elif now > progress_deadline:
                raise RunFailed(
                    f"waiting for {what}: the trainer heartbeats but its policy version stayed at {current} "
                    f"for {services.trainer_progress_timeout_s:.0f} s (services.trainer_progress_timeout_s): "
                    "a step or a collective is stuck"
                )
            if not announced and now - started > WAIT_NOTICE_S:
                announced = True
                await self._announce_wait(
                    f"{what} (policy version {version}, now {current})",
                    progress_deadline,
                    "services.trainer_progress_timeout_s",
                )
            next_check = time.monotonic() + POLL_S
            while time.monotonic() < next_check and await self._trainer_version() < version:
                await asyncio.sleep(VERSION_POLL_S)
        await self._check_trainer_faults()
        await self._wait_for_servers(version)

    async def _wait_for_servers(self, version: int, deadline: float | None = None) -> None:
        """Until at least one healthy rollout server serves this run's `version` or newer, by
        `deadline` (monotonic; default services.rollout_timeout_s from now)."""
        assert self.pool is not None
        self.pool.required_version = version
        started = time.monotonic()
        if deadline is None:
            deadline = started + self.config.services.rollout_timeout_s
        announced = False
        while True:
            await self.pool.probe()
            await self._refresh_registry()
            if self.pool.healthy():
                return
            if time.monotonic() > deadline:
                raise RunFailed(
                    f"no healthy rollout server reached policy version {version} of run {self.run_id} within "
                    f"services.rollout_timeout_s ({self.config.services.rollout_timeout_s:.0f} s; servers: "
                    f"{', '.join(self.endpoints.rollout_addresses)})"
                )
            await self._check_stop()
            if not announced and time.monotonic() - started > WAIT_NOTICE_S:
                announced = True
                await self._announce_wait(
                    f"a rollout server at policy version {version}", deadline, "services.rollout_timeout_s"
                )
            await asyncio.sleep(POLL_S)

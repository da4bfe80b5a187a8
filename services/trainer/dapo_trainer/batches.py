"""TrainBatches in: reading the run's stream on rank 0, checking them against the model, and cutting
them into per-rank micro-batches of padded (B, T) tensors.

Reading (rank 0, consumer group `keys.TRAINER_GROUP`): on start every pending entry of the group
(this consumer's or a dead one's) is claimed with XAUTOCLAIM, then re-read in stream order (XREADGROUP
from id 0), and only then new entries (`>`). An entry stays pending until the checkpoint that includes
it is committed, so after a crash the unacknowledged batches come back in order.

Trimming: `trim_acknowledged` deletes every entry before the oldest one a restore could still need, the
group's first pending entry (or, with none pending, the first never delivered), but the newest
`keep_acknowledged` of them. Every entry before that point is acknowledged, which happens only once a
committed checkpoint covers the batch (or the batch was dead-lettered, its payload copied to the
dead-letter stream, or skipped as already applied). It runs after every XACK and when the stream is
opened, so a crash between an XACK and its trim leaves nothing behind for good.

Splitting: the batch's sequences form consecutive optimizer steps of `train_global_batch_size`;
each step's sequences are split into contiguous shares, one per rank, and each share into micro-batches
(`train_micro_batch_size` sequences, or packed up to `max_tokens_per_microbatch` padded tokens).
All ranks plan from the whole batch, so they agree on the number of micro-batches: a rank with fewer
runs empty (fully masked) ones, because FSDP's collectives need every rank in every forward.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from dapo import keys
from dapo.batch import BatchFormatError, TrainBatch
from dapo_trainer.redis_io import RetryingRedis

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamEntry:
    entry_id: str
    fields: dict[bytes, bytes]


class BatchStream:
    """Rank 0's view of `keys.batch_stream(run_id)` through the trainer consumer group."""

    def __init__(
        self,
        redis: RetryingRedis,
        run_id: str,
        consumer: str | None = None,
        keep_acknowledged: int = 0,
    ) -> None:
        self.redis = redis
        self.run_id = run_id
        self.stream = keys.batch_stream(run_id)
        self.group = keys.TRAINER_GROUP
        self.consumer = consumer or f"trainer-{socket.gethostname()}-{os.getpid()}"
        self.keep_acknowledged = keep_acknowledged
        self._history_cursor: str | None = "0"
        self._ensure_group()
        self._claim_pending()
        self.trim_acknowledged()

    def _ensure_group(self) -> None:
        groups = self.redis.xinfo_groups(self.stream) if self.redis.exists(self.stream) else []
        if not any(_text(g["name"]) == self.group for g in groups):
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)

    def _claim_pending(self) -> None:
        """Take over every pending entry (ours from before a restart, or a dead consumer's)."""
        cursor = "0-0"
        num_claimed = 0
        while True:
            # Redis 6.2 answers two items, 7.x three: read only the first two. (redis-py drops the
            # cursor when justid=True, so the entries come along.)
            reply = self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=0, start_id=cursor, count=100
            )
            cursor = _text(reply[0])
            num_claimed += len(reply[1])
            if cursor == "0-0":
                break
        for consumer in self.redis.xinfo_consumers(self.stream, self.group):
            name = _text(consumer["name"])
            if name != self.consumer and int(consumer["pending"]) == 0:
                self.redis.xgroup_delconsumer(self.stream, self.group, name)
        if num_claimed:
            log.info("re-reading %d pending batch(es) of run %s", num_claimed, self.run_id)

    def read(self, block_ms: int) -> StreamEntry | None:
        """The next entry: first the claimed pending ones in stream order, then new ones."""
        while self._history_cursor is not None:
            reply = self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: self._history_cursor}, count=1
            )
            entries = reply[0][1] if reply else []
            if not entries:
                self._history_cursor = None
                break
            entry_id, fields = entries[0]
            self._history_cursor = _text(entry_id)
            if not fields:  # pending, but the entry itself was trimmed from the stream
                log.warning(
                    "pending entry %s of %s has no fields (trimmed); acknowledging", entry_id, self.stream
                )
                self.ack([_text(entry_id)])
                continue
            return StreamEntry(_text(entry_id), fields)
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=1, block=block_ms)
        if not reply or not reply[0][1]:
            return None
        entry_id, fields = reply[0][1][0]
        return StreamEntry(_text(entry_id), fields)

    def ack(self, entry_ids: Sequence[str]) -> None:
        """Acknowledge the entries, then trim what no restore can need any more."""
        if entry_ids:
            self.redis.xack(self.stream, self.group, *entry_ids)
            self.trim_acknowledged()

    def first_needed_id(self) -> str:
        """The id of the oldest entry a restore could still need: the first pending one, else the one
        after the last delivered (every entry before it is acknowledged)."""
        pending = self.redis.xpending(self.stream, self.group)
        if pending["pending"]:
            return _text(pending["min"])
        group = next(g for g in self.redis.xinfo_groups(self.stream) if _text(g["name"]) == self.group)
        millis, _, seq = _text(group["last-delivered-id"]).partition("-")
        return f"{millis}-{int(seq) + 1}"

    def trim_acknowledged(self) -> int:
        """Delete the entries before `first_needed_id` but the newest `keep_acknowledged` of them;
        returns how many were deleted."""
        cutoff = self.first_needed_id()
        if self.keep_acknowledged:
            kept = self.redis.xrevrange(self.stream, max=f"({cutoff}", count=self.keep_acknowledged)
            if len(kept) < self.keep_acknowledged:
                return 0
            cutoff = _text(kept[-1][0])
        return int(self.redis.xtrim(self.stream, minid=cutoff, approximate=False))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_batch(
    fields: dict[bytes, bytes],
    *,
    run_id: str,
    vocab_size: int,
    max_total_sequence_length: int,
    train_global_batch_size: int,
) -> TrainBatch:
    """The entry as a TrainBatch that fits the model, or BatchFormatError naming the batch and field."""
    batch = TrainBatch.from_fields(cast(dict[bytes | str, bytes | str], fields))

    def error(field: str, what: str) -> BatchFormatError:
        return BatchFormatError(f"batch {batch.batch_id}: field '{field}' {what}")

    if batch.run_id != run_id:
        raise error("run_id", f"is '{batch.run_id}', but this trainer serves run '{run_id}'")
    if batch.num_sequences % train_global_batch_size:
        raise error(
            "response_ids",
            f"holds {batch.num_sequences} sequences, not a multiple of "
            f"policy.train_global_batch_size ({train_global_batch_size})",
        )
    for name in ("prompt_ids", "response_ids"):
        for i, ids in enumerate(getattr(batch, name)):
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
                raise error(
                    name,
                    f"sequence {i} holds token id {int(ids.max()) if int(ids.max()) >= vocab_size else int(ids.min())}"
                    f" outside the model's vocabulary [0, {vocab_size})",
                )
    for i in range(batch.num_sequences):
        if len(batch.response_ids[i]) == 0:
            raise error("response_ids", f"sequence {i} is empty")
        total = len(batch.prompt_ids[i]) + len(batch.response_ids[i])
        if total > max_total_sequence_length:
            raise error(
                "response_ids",
                f"sequence {i}: prompt + response is {total} tokens, longer than "
                f"policy.max_total_sequence_length ({max_total_sequence_length})",
            )
        if np.isnan(batch.rollout_logprobs[i]).any():
            raise error("rollout_logprobs", f"sequence {i} holds NaN")
    return batch


# --- planning --------------------------------------------------------------------------------------


def optimizer_step_slices(num_sequences: int, global_batch_size: int) -> list[range]:
    """Consecutive ranges of `global_batch_size` sequences, one per optimizer step."""
    assert num_sequences % global_batch_size == 0, (num_sequences, global_batch_size)
    return [range(s, s + global_batch_size) for s in range(0, num_sequences, global_batch_size)]


def rank_share(indices: range, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous share of `indices` (sizes differ by at most one)."""
    n = len(indices)
    start = indices.start + (n * rank) // world_size
    stop = indices.start + (n * (rank + 1)) // world_size
    return range(start, stop)


def split_micro_batches(
    indices: Sequence[int], lengths: Sequence[int], micro_batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Consecutive groups of `indices`: `micro_batch_size` each, or, with `max_tokens`, as many as fit
    when padded to the longest (a sequence longer than the budget goes alone)."""
    if max_tokens is None:
        return [list(indices[i : i + micro_batch_size]) for i in range(0, len(indices), micro_batch_size)]
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in indices:
        length = lengths[index]
        if current and max(longest, length) * (len(current) + 1) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(index)
        longest = max(longest, length)
    if current:
        groups.append(current)
    return groups


def plan_batch(
    batch: TrainBatch,
    *,
    global_batch_size: int,
    micro_batch_size: int,
    max_tokens: int | None,
    world_size: int,
) -> list[list[list[list[int]]]]:
    """plan[step][rank] = that rank's micro-batches (lists of sequence indices) in optimizer step `step`;
    every rank of a step has the same number of micro-batches (padded with empty ones)."""
    lengths = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids, strict=True)]
    plan = []
    for step_indices in optimizer_step_slices(batch.num_sequences, global_batch_size):
        per_rank = [
            split_micro_batches(
                rank_share(step_indices, r, world_size), lengths, micro_batch_size, max_tokens
            )
            for r in range(world_size)
        ]
        num_micro = max(1, max(len(m) for m in per_rank))
        plan.append([m + [[] for _ in range(num_micro - len(m))] for m in per_rank])
    return plan


def loss_denominator(batch: TrainBatch, indices: Sequence[int], aggregation: str) -> int:
    """The global denominator of one optimizer step: unmasked tokens (token-mean) or sequences with
    at least one unmasked token (sequence modes), over all its sequences (all ranks)."""
    masks = [np.asarray(batch.loss_mask[i]) != 0 for i in indices]
    if aggregation == "token-mean":
        return int(sum(int(m.sum()) for m in masks))
    return int(sum(1 for m in masks if m.any()))


# --- collation -------------------------------------------------------------------------------------


@dataclass
class MicroBatch:
    """Padded tensors of one micro-batch. T = longest prompt + response, R = longest response."""

    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    response_start_B: torch.Tensor
    targets_BR: torch.Tensor
    mask_BR: torch.Tensor
    rollout_logp_BR: torch.Tensor
    advantages_B: torch.Tensor
    num_tokens: int  # real (unpadded) prompt + response tokens

    def to(self, device: torch.device) -> MicroBatch:
        return MicroBatch(
            input_ids_BT=self.input_ids_BT.to(device, non_blocking=True),
            attention_mask_BT=self.attention_mask_BT.to(device, non_blocking=True),
            response_start_B=self.response_start_B.to(device, non_blocking=True),
            targets_BR=self.targets_BR.to(device, non_blocking=True),
            mask_BR=self.mask_BR.to(device, non_blocking=True),
            rollout_logp_BR=self.rollout_logp_BR.to(device, non_blocking=True),
            advantages_B=self.advantages_B.to(device, non_blocking=True),
            num_tokens=self.num_tokens,
        )


def collate(batch: TrainBatch, indices: Sequence[int], pad_token_id: int) -> MicroBatch:
    """Right-padded tensors of the sequences `indices`; an empty `indices` gives one fully masked
    two-token sequence (a placeholder that keeps the ranks' collectives in step)."""
    if not indices:
        return MicroBatch(
            input_ids_BT=torch.full((1, 2), pad_token_id, dtype=torch.long),
            attention_mask_BT=torch.ones((1, 2), dtype=torch.long),
            response_start_B=torch.ones(1, dtype=torch.long),
            targets_BR=torch.full((1, 1), pad_token_id, dtype=torch.long),
            mask_BR=torch.zeros((1, 1), dtype=torch.bool),
            rollout_logp_BR=torch.zeros((1, 1), dtype=torch.float32),
            advantages_B=torch.zeros(1, dtype=torch.float32),
            num_tokens=0,
        )
    prompts = [np.asarray(batch.prompt_ids[i], dtype=np.int64) for i in indices]
    responses = [np.asarray(batch.response_ids[i], dtype=np.int64) for i in indices]
    total_T = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    response_R = max(len(r) for r in responses)
    num = len(indices)
    input_ids = np.full((num, total_T), pad_token_id, dtype=np.int64)
    attention = np.zeros((num, total_T), dtype=np.int64)
    targets = np.full((num, response_R), pad_token_id, dtype=np.int64)
    mask = np.zeros((num, response_R), dtype=bool)
    rollout = np.zeros((num, response_R), dtype=np.float32)
    starts = np.zeros(num, dtype=np.int64)
    for row, (i, prompt, response) in enumerate(zip(indices, prompts, responses, strict=True)):
        length = len(prompt) + len(response)
        input_ids[row, : len(prompt)] = prompt
        input_ids[row, len(prompt) : length] = response
        attention[row, :length] = 1
        starts[row] = len(prompt)
        targets[row, : len(response)] = response
        mask[row, : len(response)] = np.asarray(batch.loss_mask[i]) != 0
        rollout[row, : len(response)] = batch.rollout_logprobs[i]
    return MicroBatch(
        input_ids_BT=torch.from_numpy(input_ids),
        attention_mask_BT=torch.from_numpy(attention),
        response_start_B=torch.from_numpy(starts),
        targets_BR=torch.from_numpy(targets),
        mask_BR=torch.from_numpy(mask),
        rollout_logp_BR=torch.from_numpy(rollout),
        advantages_B=torch.from_numpy(np.asarray(batch.advantages, dtype=np.float32)[list(indices)]),
        num_tokens=int(attention.sum()),
    )

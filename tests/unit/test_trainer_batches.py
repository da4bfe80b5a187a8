"""Batch checks, optimizer-step/rank/micro-batch planning and padding of the trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dapo_trainer.batches import (
    collate,
    decode_batch,
    loss_denominator,
    plan_batch,
    rank_share,
    split_micro_batches,
)
from dapo_trainer.synthetic import make_batch

from dapo.batch import BatchFormatError, TrainBatch


def _decode(batch: TrainBatch, **overrides: object) -> TrainBatch:
    options = {
        "run_id": "r",
        "vocab_size": 512,
        "max_total_sequence_length": 64,
        "train_global_batch_size": 4,
    }
    options.update(overrides)
    return decode_batch(batch.to_fields(), **options)  # type: ignore[arg-type]


def test_decode_accepts_a_fitting_batch() -> None:
    batch = make_batch("r", 3, num_sequences=8, vocab_size=512)
    decoded = _decode(batch)
    assert decoded.batch_id == batch.batch_id
    assert [list(x) for x in decoded.response_ids] == [list(x) for x in batch.response_ids]


def test_decode_rejects_token_ids_outside_the_vocabulary_naming_batch_and_field() -> None:
    batch = make_batch("r", 0, num_sequences=4, vocab_size=512)
    batch.response_ids[2] = batch.response_ids[2].copy()
    batch.response_ids[2][0] = 512
    with pytest.raises(
        BatchFormatError, match=rf"batch {batch.batch_id}: field 'response_ids' sequence 2 .*512"
    ):
        _decode(batch)


def test_decode_rejects_sequences_longer_than_the_limit() -> None:
    batch = make_batch(
        "r", 0, num_sequences=4, vocab_size=512, prompt_length=(40, 40), response_length=(30, 30)
    )
    with pytest.raises(
        BatchFormatError, match=r"field 'response_ids' sequence 0: prompt \+ response is 70 tokens"
    ):
        _decode(batch)


def test_decode_rejects_another_run_and_a_count_not_divisible_by_the_global_batch() -> None:
    with pytest.raises(BatchFormatError, match="field 'run_id'"):
        _decode(make_batch("other", 0, num_sequences=4, vocab_size=512))
    with pytest.raises(BatchFormatError, match=r"field 'response_ids' holds 6 sequences"):
        _decode(make_batch("r", 0, num_sequences=6, vocab_size=512))


def test_decode_rejects_a_corrupt_payload() -> None:
    with pytest.raises(BatchFormatError, match="batch b1: field 'payload'"):
        decode_batch(
            {b"batch_id": b"b1", b"payload": b"not safetensors"},
            run_id="r",
            vocab_size=512,
            max_total_sequence_length=64,
            train_global_batch_size=4,
        )


def test_rank_shares_cover_every_index_once() -> None:
    for n, world in [(8, 2), (7, 3), (4, 4), (3, 4)]:
        shares = [rank_share(range(10, 10 + n), r, world) for r in range(world)]
        assert [i for s in shares for i in s] == list(range(10, 10 + n))
        assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_micro_batches_by_count_and_by_token_budget() -> None:
    lengths = [5, 5, 10, 2, 30, 3]
    assert split_micro_batches(range(6), lengths, 4, None) == [[0, 1, 2, 3], [4, 5]]
    # Padded size = longest * count must stay within 20; a 30-token sequence goes alone.
    assert split_micro_batches(range(6), lengths, 4, 20) == [[0, 1], [2, 3], [4], [5]]


def test_plan_pads_ranks_to_the_same_number_of_micro_batches() -> None:
    batch = make_batch("r", 0, num_sequences=6, vocab_size=512)
    plan = plan_batch(batch, global_batch_size=3, micro_batch_size=1, max_tokens=None, world_size=2)
    assert len(plan) == 2  # two optimizer steps of 3 sequences
    assert plan[0] == [[[0], []], [[1], [2]]]
    assert plan[1] == [[[3], []], [[4], [5]]]


def test_collate_places_prompt_and_response_and_masks() -> None:
    batch = TrainBatch(
        run_id="r",
        step=0,
        prompt_ids=[np.array([1, 2, 3]), np.array([4])],
        response_ids=[np.array([5, 6]), np.array([7, 8, 9])],
        rollout_logprobs=[np.array([-1.0, -2.0]), np.array([-3.0, -4.0, -5.0])],
        loss_mask=[np.array([1, 0]), np.array([1, 1, 1])],
        advantages=np.array([0.5, -0.5]),
        versions=np.array([0, 0]),
    )
    mb = collate(batch, [0, 1], pad_token_id=0)
    assert mb.input_ids_BT.tolist() == [[1, 2, 3, 5, 6], [4, 7, 8, 9, 0]]
    assert mb.attention_mask_BT.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert mb.response_start_B.tolist() == [3, 1]
    assert mb.targets_BR.tolist() == [[5, 6, 0], [7, 8, 9]]
    assert mb.mask_BR.tolist() == [[True, False, False], [True, True, True]]
    assert mb.rollout_logp_BR.tolist() == [[-1.0, -2.0, 0.0], [-3.0, -4.0, -5.0]]
    assert mb.advantages_B.tolist() == [0.5, -0.5]
    assert mb.num_tokens == 9
    assert loss_denominator(batch, [0, 1], "token-mean") == 4
    assert loss_denominator(batch, [0, 1], "seq-mean-token-mean") == 2
    placeholder = collate(batch, [], pad_token_id=0)
    assert placeholder.num_tokens == 0 and not bool(placeholder.mask_BR.any())
    assert placeholder.input_ids_BT.dtype == torch.long

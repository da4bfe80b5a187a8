"""The TrainBatch wire format round-trips exactly and names the field when an entry is malformed."""

from __future__ import annotations

import numpy as np
import pytest

from dapo.batch import BatchFormatError, TrainBatch


def make_batch(**overrides: object) -> TrainBatch:
    rng = np.random.default_rng(0)
    lengths = [3, 1, 5]
    fields: dict[str, object] = dict(
        run_id="run1",
        step=7,
        prompt_ids=[rng.integers(0, 500, size=4).astype(np.int32) for _ in lengths],
        response_ids=[rng.integers(0, 500, size=n).astype(np.int32) for n in lengths],
        rollout_logprobs=[-rng.random(n).astype(np.float32) for n in lengths],
        loss_mask=[np.ones(n, dtype=np.uint8) for n in lengths],
        advantages=np.array([1.0, -0.5, 0.0], dtype=np.float32),
        versions=np.array([3, 3, 2], dtype=np.int64),
        metadata={"group_ids": [0, 0, 1]},
    )
    fields.update(overrides)
    return TrainBatch(**fields)  # type: ignore[arg-type]


def test_round_trip_is_exact() -> None:
    batch = make_batch()
    fields = batch.to_fields()
    assert set(fields) == {"batch_id", "run_id", "payload"}
    again = TrainBatch.from_fields({k.encode(): v for k, v in fields.items()})
    assert again.batch_id == batch.batch_id and again.run_id == "run1" and again.step == 7
    assert again.metadata == {"group_ids": [0, 0, 1]}
    for name in ("prompt_ids", "response_ids", "rollout_logprobs", "loss_mask"):
        for a, b in zip(getattr(again, name), getattr(batch, name), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.advantages, batch.advantages)
    np.testing.assert_array_equal(again.versions, batch.versions)
    assert again.num_loss_tokens == 9


def test_batch_ids_are_unique() -> None:
    assert make_batch().batch_id != make_batch().batch_id


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"advantages": np.zeros(2, np.float32)}, "field 'advantages' has shape (2,), expected (3,)"),
        (
            {"loss_mask": [np.ones(3, np.uint8), np.ones(2, np.uint8), np.ones(5, np.uint8)]},
            "field 'loss_mask' sequence 1 has 2 entries, expected 1",
        ),
        ({"prompt_ids": [np.zeros(0, np.int32)] * 3}, "field 'prompt_ids' sequence 0 is empty"),
        (
            {"advantages": np.array([1.0, np.nan, 0.0], np.float32)},
            "field 'advantages' holds a non-finite value",
        ),
        (
            {
                "response_ids": [],
                "prompt_ids": [],
                "rollout_logprobs": [],
                "loss_mask": [],
                "advantages": np.zeros(0),
                "versions": np.zeros(0),
            },
            "field 'response_ids' is empty",
        ),
    ],
)
def test_inconsistent_batches_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(BatchFormatError) as excinfo:
        make_batch(batch_id="b42", **overrides)
    assert "batch b42" in str(excinfo.value) and message in str(excinfo.value)


def test_corrupt_entries_name_the_field() -> None:
    fields = make_batch(batch_id="b1").to_fields()
    with pytest.raises(BatchFormatError, match="batch b1: field 'payload' is missing"):
        TrainBatch.from_fields({"batch_id": b"b1"})
    with pytest.raises(BatchFormatError, match="batch b1: field 'payload' is not a safetensors buffer"):
        TrainBatch.from_fields({"batch_id": b"b1", "payload": b"garbage"})
    truncated = {**fields, "payload": fields["payload"][:-8]}
    with pytest.raises(BatchFormatError, match="batch b1"):
        TrainBatch.from_fields(truncated)

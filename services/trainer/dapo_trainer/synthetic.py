"""Synthetic TrainBatches (random tokens, advantages and log-probs) for benchmarks and tests.

Deterministic for a given seed, so two trainer runs fed the same batches must end with the same
parameters.
"""

from __future__ import annotations

import numpy as np

from dapo.batch import TrainBatch


def make_batch(
    run_id: str,
    step: int,
    *,
    num_sequences: int,
    vocab_size: int,
    prompt_length: tuple[int, int] = (4, 12),
    response_length: tuple[int, int] = (3, 16),
    seed: int = 0,
) -> TrainBatch:
    """One batch of `num_sequences` sequences with lengths drawn from the inclusive ranges."""
    rng = np.random.default_rng([seed, step])
    prompts, responses, logps, masks = [], [], [], []
    for _ in range(num_sequences):
        num_prompt = int(rng.integers(prompt_length[0], prompt_length[1] + 1))
        num_response = int(rng.integers(response_length[0], response_length[1] + 1))
        prompts.append(rng.integers(0, vocab_size, num_prompt).astype(np.int32))
        responses.append(rng.integers(0, vocab_size, num_response).astype(np.int32))
        logps.append((-rng.exponential(6.0, num_response)).astype(np.float32))
        mask = np.ones(num_response, dtype=np.uint8)
        mask[-1] = rng.integers(0, 2)  # some sequences end with a masked token
        masks.append(mask)
    advantages = rng.standard_normal(num_sequences).astype(np.float32)
    return TrainBatch(
        run_id=run_id,
        step=step,
        prompt_ids=prompts,
        response_ids=responses,
        rollout_logprobs=logps,
        loss_mask=masks,
        advantages=advantages,
        versions=np.full(num_sequences, step, dtype=np.int64),
        batch_id=f"{run_id}-batch-{step}-{seed}",
    )

"""`train_on_batch` in this process on one FSDP2 rank: micro-batching does not change the update, and
with several optimizer steps per batch the later steps see a ratio against the batch's start."""

from __future__ import annotations

import pytest
import torch
from dapo_trainer.synthetic import make_batch

from dapo.config import parse_config


@pytest.fixture
def one_rank():  # noqa: ANN201
    from dapo_trainer.distributed import setup_distributed, teardown_distributed

    ctx = setup_distributed()
    yield ctx
    teardown_distributed()


def _train(ctx, model_dir, batch, loss_fn=None, **policy):  # noqa: ANN001, ANN202
    from dapo_trainer.model import read_model_info
    from dapo_trainer.optim import build_optimizer
    from dapo_trainer.step import train_on_batch
    from dapo_trainer.train import setup_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    config = parse_config(
        {
            "policy": {
                "model_name": str(model_dir),
                "precision": "float32",
                "max_total_sequence_length": 64,
                "generation": {"max_new_tokens": 32},
                "optimizer": {"lr": 1e-3, "eps": 1e-4},
                **policy,
            },
            "grpo": {"num_prompts_per_step": 2, "num_generations_per_prompt": 4},
            "loss_fn": loss_fn or {},
        }
    )
    info = read_model_info(str(model_dir), None)
    model = setup_model(config, info, ctx)
    optimizer, scheduler = build_optimizer(model, config.policy.optimizer, config.policy.scheduler)
    result = train_on_batch(model, optimizer, scheduler, batch, config, ctx, info.pad_token_id)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state["_lr_after"] = torch.tensor(optimizer.param_groups[0]["lr"])
    # the last optimizer step's gradients, as clipped (optimizer.step leaves them in place)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    state["_grad_norm_after"] = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    return result, state


def test_micro_batching_does_not_change_the_update(one_rank, tiny_model_dir) -> None:
    batch = make_batch("r", 0, num_sequences=8, vocab_size=512)
    whole, whole_state = _train(
        one_rank, tiny_model_dir, batch, train_global_batch_size=8, train_micro_batch_size=8
    )
    single, single_state = _train(
        one_rank, tiny_model_dir, batch, train_global_batch_size=8, train_micro_batch_size=1
    )
    packed, packed_state = _train(
        one_rank,
        tiny_model_dir,
        batch,
        train_global_batch_size=8,
        train_micro_batch_size=1,
        max_tokens_per_microbatch=40,
    )
    for result in (single, packed):
        assert result.metrics["train/loss"] == pytest.approx(whole.metrics["train/loss"], abs=1e-6)
        assert result.metrics["train/grad_norm"] == pytest.approx(whole.metrics["train/grad_norm"], rel=1e-5)
    for state in (single_state, packed_state):
        for name, tensor in whole_state.items():
            if name.startswith("_"):
                continue
            torch.testing.assert_close(state[name], tensor, rtol=0, atol=1e-6)
    assert whole.num_optimizer_steps == 1
    assert whole.metrics["train/ratio_mean"] == 1.0  # one step: old log-probs are the step's own


def test_several_optimizer_steps_per_batch_use_the_batch_start_as_old_policy(
    one_rank, tiny_model_dir
) -> None:
    batch = make_batch("r", 0, num_sequences=8, vocab_size=512)
    result, _ = _train(one_rank, tiny_model_dir, batch, train_global_batch_size=2, train_micro_batch_size=1)
    assert result.num_optimizer_steps == 4
    assert result.metrics["train/num_optimizer_steps"] == 4.0
    # Steps 2-4 run on moved parameters against the start's log-probs: the ratio leaves 1.
    assert result.metrics["train/ratio_max"] > 1.0 + 1e-3
    assert result.metrics["train/approx_kl"] > 0.0


def test_only_later_optimizer_steps_need_a_pass_for_old_log_probs(
    one_rank, tiny_model_dir, monkeypatch
) -> None:
    import dapo_trainer.step as step

    passes: list[int] = []
    forward = step._forward
    monkeypatch.setattr(
        step, "_forward", lambda model, mb, **kw: passes.append(1) or forward(model, mb, **kw)
    )
    batch = make_batch("r", 0, num_sequences=8, vocab_size=512)
    result, _ = _train(one_rank, tiny_model_dir, batch, train_global_batch_size=2, train_micro_batch_size=1)
    assert result.num_optimizer_steps == 4
    assert len(passes) == 6  # steps 2-4, two micro-batches each; step 1's own forward gives its old log-probs
    passes.clear()
    _train(one_rank, tiny_model_dir, batch, train_global_batch_size=8, train_micro_batch_size=4)
    assert passes == []  # one optimizer step: no extra pass at all


def test_max_grad_norm_clips_the_gradient_of_each_step(one_rank, tiny_model_dir) -> None:
    """NeMo RL's policy.max_grad_norm: the global gradient norm is clipped to it before the optimizer
    step; train/grad_norm reports the norm before clipping; null leaves the gradient as it is."""
    batch = make_batch("r", 0, num_sequences=8, vocab_size=512)
    full = dict(train_global_batch_size=8, train_micro_batch_size=8)
    free, free_state = _train(one_rank, tiny_model_dir, batch, max_grad_norm=None, **full)
    raw_norm = free.metrics["train/grad_norm"]
    assert float(free_state["_grad_norm_after"]) == pytest.approx(raw_norm, rel=1e-5)
    limit = raw_norm / 10
    clipped, clipped_state = _train(one_rank, tiny_model_dir, batch, max_grad_norm=limit, **full)
    assert clipped.metrics["train/grad_norm"] == pytest.approx(raw_norm, rel=1e-5)
    assert float(clipped_state["_grad_norm_after"]) == pytest.approx(limit, rel=1e-4)
    moved = [name for name, t in free_state.items() if not name.startswith("_")]
    assert any(not torch.equal(free_state[n], clipped_state[n]) for n in moved)  # a different update
    loose, loose_state = _train(one_rank, tiny_model_dir, batch, max_grad_norm=raw_norm * 10, **full)
    assert float(loose_state["_grad_norm_after"]) == pytest.approx(raw_norm, rel=1e-5)  # under the limit


def test_token_level_loss_chooses_the_average_over_tokens_or_sequences(one_rank, tiny_model_dir) -> None:
    """loss_fn.token_level_loss: true averages -A over all loss tokens of the batch (DAPO), false
    averages each sequence's tokens first and then the sequences (GRPO). In a batch's only optimizer
    step the ratio is 1, so the loss is exactly that average of -A."""
    import numpy as np

    batch = make_batch("r", 0, num_sequences=8, vocab_size=512)
    advantages = np.asarray(batch.advantages, dtype=np.float64)
    num_tokens = np.array([int(np.asarray(m).sum()) for m in batch.loss_mask], dtype=np.float64)
    assert len(set(num_tokens)) > 1  # lengths differ, so the two averages differ
    sizes = dict(train_global_batch_size=8, train_micro_batch_size=4)
    tokens, _ = _train(one_rank, tiny_model_dir, batch, **sizes)
    sequences, _ = _train(one_rank, tiny_model_dir, batch, loss_fn={"token_level_loss": False}, **sizes)
    token_mean = float(-(advantages * num_tokens).sum() / num_tokens.sum())
    assert tokens.metrics["train/loss"] == pytest.approx(token_mean, abs=1e-5)
    assert sequences.metrics["train/loss"] == pytest.approx(float(-advantages.mean()), abs=1e-5)
    assert abs(token_mean - float(-advantages.mean())) > 1e-3


def test_logprob_chunk_size_and_temperature_reach_the_sharded_model(one_rank, tiny_model_dir) -> None:
    """The trainer's log-probs are computed in chunks of policy.logprob_chunk_size tokens, at the
    sampling temperature (NeMo RL scales the logits by policy.generation.temperature)."""
    from dapo_trainer.model import read_model_info
    from dapo_trainer.train import setup_model

    config = parse_config(
        {
            "policy": {
                "model_name": str(tiny_model_dir),
                "precision": "float32",
                "logprob_chunk_size": 7,
                "generation": {"temperature": 0.7, "max_new_tokens": 32},
            }
        }
    )
    model = setup_model(config, read_model_info(str(tiny_model_dir), None), one_rank)
    assert (model.chunk_size, model.temperature) == (7, 0.7)


def test_a_nemo_scheduler_steps_once_per_batch(one_rank, tiny_model_dir) -> None:
    """NeMo RL steps policy.scheduler once per training step, not per optimizer step."""
    batch = make_batch("r", 0, num_sequences=8, vocab_size=512)
    schedule = [
        {"name": "torch.optim.lr_scheduler.LinearLR", "kwargs": {"start_factor": 0.5, "total_iters": 2}}
    ]
    result, state = _train(
        one_rank,
        tiny_model_dir,
        batch,
        train_global_batch_size=2,
        train_micro_batch_size=1,
        scheduler=schedule,
    )
    assert result.num_optimizer_steps == 4
    assert result.metrics["train/lr"] == pytest.approx(0.5e-3)  # all four steps at the batch's rate
    assert float(state["_lr_after"]) == pytest.approx(0.75e-3)  # then one scheduler step


def test_the_gathered_weights_are_copies_in_the_served_dtype(one_rank, tiny_model_dir) -> None:
    """What goes out as a version never shares storage with the parameters: the next optimizer step
    changes those in place while the version is still being sent (in the background)."""
    from dapo_trainer.model import read_model_info
    from dapo_trainer.publish import gather_full_state_dict
    from dapo_trainer.train import setup_model

    config = parse_config({"policy": {"model_name": str(tiny_model_dir), "precision": "float32"}})
    info = read_model_info(str(tiny_model_dir), None)
    model = setup_model(config, info, one_rank)
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        full = gather_full_state_dict(model, dtype, info.tie_word_embeddings, one_rank)
        assert full and all(t.dtype == torch_dtype and t.device.type == "cpu" for t in full.values())
        before = {name: tensor.clone() for name, tensor in full.items()}
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(1.0)
        for name, tensor in full.items():
            assert torch.equal(tensor, before[name]), f"{name} ({dtype}) follows the parameters"

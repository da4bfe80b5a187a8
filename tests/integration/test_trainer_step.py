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


def _train(ctx, model_dir, batch, **policy):  # noqa: ANN001, ANN202
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
        }
    )
    info = read_model_info(str(model_dir), None)
    model = setup_model(config, info, ctx)
    optimizer, scheduler = build_optimizer(model, config.policy.optimizer, config.policy.scheduler)
    result = train_on_batch(model, optimizer, scheduler, batch, config, ctx, info.pad_token_id)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    state["_lr_after"] = torch.tensor(optimizer.param_groups[0]["lr"])
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

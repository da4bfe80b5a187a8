"""Each NeMo RL key we accept does what NeMo RL says: the schedule, checkpoint retention, prompts,
epochs, the rollout engine's settings and the layout checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dapo_controller.loop import epochs_done
from dapo_trainer.checkpoint import STATE_FILE, _prune, versions_to_keep
from dapo_trainer.optim import build_optimizer

from dapo.config import ConfigError, load_config
from dapo.data import PromptCursor, PromptRow
from dapo.launch.services import check_layout, gpu_split, rollout_settings
from dapo.prompts import render_text

TINY_MODEL = Path(__file__).resolve().parents[2] / "examples/tiny-model"

NEMO_SCHEDULE = [
    "policy.scheduler=[{name: torch.optim.lr_scheduler.LinearLR, kwargs: {start_factor: 0.1, end_factor: 1.0,"
    " total_iters: 4}}, {name: torch.optim.lr_scheduler.ConstantLR, kwargs: {factor: 1.0, total_iters: 1e10}},"
    " {milestones: [4]}]",
    "policy.optimizer.kwargs.lr=1e-3",
]


def test_nemo_scheduler_ramps_linearly_then_holds() -> None:
    config = load_config(None, NEMO_SCHEDULE)
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = build_optimizer(model, config.policy.optimizer, config.policy.scheduler)
    lrs = []
    for _ in range(7):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # LinearLR from 0.1 * lr to lr over 4 steps, then ConstantLR(factor 1): NeMo's warm-up recipe.
    assert lrs == pytest.approx([1e-4, 3.25e-4, 5.5e-4, 7.75e-4, 1e-3, 1e-3, 1e-3])


def test_without_a_scheduler_the_warmup_counts_optimizer_steps() -> None:
    config = load_config(None, ["policy.optimizer.warmup_steps=2", "policy.optimizer.lr=1e-3"])
    optimizer, scheduler = build_optimizer(torch.nn.Linear(2, 2), config.policy.optimizer, None)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_keep_top_k_keeps_the_best_by_metric_and_the_newest() -> None:
    accuracy = {10: 0.5, 20: 0.9, 30: 0.6, 40: 0.7}
    assert versions_to_keep([10, 20, 30, 40, 50], 2, accuracy, higher_is_better=True) == {20, 40, 50}
    assert versions_to_keep([10, 20, 30, 40], 2, accuracy, higher_is_better=False) == {10, 30, 40}
    assert versions_to_keep([10, 20, 30, 40], 2, None) == {30, 40}  # no metric_name: the newest
    assert versions_to_keep([10, 20, 30], 1, {10: 0.5, 20: 0.5}) == {20, 30}  # a tie goes to the newer


def test_prune_deletes_the_checkpoints_outside_the_top_k(tmp_path: Path) -> None:
    for version in (10, 20, 30, 40):
        (tmp_path / f"step_{version}").mkdir()
        (tmp_path / f"step_{version}" / STATE_FILE).write_text(json.dumps({"version": version}))
    _prune(tmp_path, 1, {10: 0.9, 20: 0.1, 30: 0.2}, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10", "step_40"]


MESSAGES = [{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "What is 2+2?"}]


def test_chat_templates_follow_nemo() -> None:
    assert render_text(MESSAGES, "default", True) is None  # the tokenizer's own template, on the server
    assert render_text(MESSAGES, None, True) == "Be brief. What is 2+2?"  # NeMo's passthrough
    assert render_text(MESSAGES, "default", False) == "Be brief. What is 2+2?"  # use_chat_template: false
    custom = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    assert render_text(MESSAGES, custom, True) == "<system>Be brief. <user>What is 2+2?<a>"


def test_a_jinja_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "t.jinja"
    path.write_text("Q: {{ messages[-1]['content'] }}\nA:")
    assert render_text(MESSAGES, str(path), True) == "Q: What is 2+2?\nA:"


def test_max_num_epochs_stops_after_whole_passes() -> None:
    rows = [PromptRow(str(i), [{"role": "user", "content": str(i)}], str(i)) for i in range(5)]
    cursor = PromptCursor(rows, seed=0)
    cursor.take(4)
    assert not epochs_done(cursor, 1)
    cursor.take(1)
    assert epochs_done(cursor, 1) and not epochs_done(cursor, 2) and not epochs_done(cursor, None)
    cursor.take(5)
    assert epochs_done(cursor, 2)


def test_vllm_cfg_reaches_the_rollout_settings() -> None:
    config = load_config(
        None,
        [
            f"policy.model_name={TINY_MODEL}",
            "policy.max_total_sequence_length=1024",
            "policy.generation.vllm_cfg.tensor_parallel_size=2",
            "policy.generation.vllm_cfg.gpu_memory_utilization=0.6",
            "policy.generation.vllm_cfg.max_model_len=768",
            "policy.generation.vllm_cfg.enforce_eager=false",
            "policy.generation.vllm_cfg.precision=bfloat16",
            "policy.hf_config_overrides={max_position_embeddings: 4096}",
        ],
    )
    settings = rollout_settings(config, 0, "127.0.0.1", 1, 2, "127.0.0.1:3")
    assert (settings.max_model_len, settings.tensor_parallel_size, settings.gpu_memory_utilization) == (
        768,
        2,
        0.6,
    )
    assert (settings.dtype, settings.enforce_eager) == ("bfloat16", False)
    assert settings.hf_overrides == {"max_position_embeddings": 4096}
    # max_model_len defaults to policy.max_total_sequence_length
    default = rollout_settings(
        load_config(None, [f"policy.model_name={TINY_MODEL}", "policy.max_total_sequence_length=1024"]),
        0,
        "127.0.0.1",
        1,
        2,
        "127.0.0.1:3",
    )
    assert default.max_model_len == 1024


def test_several_nodes_are_refused_by_the_local_launcher() -> None:
    with pytest.raises(ConfigError, match="cluster.num_nodes is 2"):
        check_layout(load_config(None, ["cluster.num_nodes=2"]))
    check_layout(load_config(None, ["cluster.num_nodes=1"]))


def test_tensor_parallel_size_must_fit_the_rollout_gpus() -> None:
    config = load_config(
        None, ["cluster.gpus_per_node=8", "cluster.rollout_gpus=4", "cluster.num_rollout_servers=4"]
    )
    assert gpu_split(config)[0] == [["0"], ["1"], ["2"], ["3"]]
    wide = load_config(
        None,
        [
            "cluster.gpus_per_node=8",
            "cluster.rollout_gpus=4",
            "cluster.num_rollout_servers=4",
            "policy.generation.vllm_cfg.tensor_parallel_size=2",
        ],
    )
    with pytest.raises(ConfigError, match="tensor_parallel_size"):
        gpu_split(wide)


def test_hf_config_overrides_and_activation_checkpointing_reach_the_model() -> None:
    from dapo_trainer.model import load_model, read_model_info

    info = read_model_info(str(Path(__file__).resolve().parents[2] / "examples/tiny-model"), None)
    model = load_model(
        info,
        chunk_size=64,
        temperature=1.0,
        config_overrides={"max_position_embeddings": 4096},
        activation_checkpointing=True,
    )
    assert model.causal_lm.config.max_position_embeddings == 4096
    assert model.causal_lm.is_gradient_checkpointing
    plain = load_model(info, chunk_size=64, temperature=1.0)
    assert not plain.causal_lm.is_gradient_checkpointing


def test_metric_name_reads_the_runs_records_per_policy_version(redis_client) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from dapo_trainer.train import Run

    from dapo import keys

    for record in (
        {"step": 0, "source": "validation", "val/accuracy": 0.25},
        {"step": 0, "source": "trainer", "train/loss": 2.0},
        {"step": 1, "source": "validation", "val/accuracy": 0.5},
        {"step": 1, "source": "trainer", "train/loss": 1.0},
    ):
        redis_client.xadd(keys.metrics_stream("r"), {"data": json.dumps(record)})

    def metrics(name: str) -> dict[int, float] | None:
        config = load_config(None, [f"checkpointing.metric_name={name}"])
        run = SimpleNamespace(config=config, io=SimpleNamespace(redis=redis_client), run_id="r")
        return Run.metric_by_version(run)  # type: ignore[arg-type]

    # validation of step s ran with version s; step s's batch produced version s + 1
    assert metrics("val:accuracy") == {0: 0.25, 1: 0.5}
    assert metrics("train:loss") == {1: 2.0, 2: 1.0}

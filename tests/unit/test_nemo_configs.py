"""NeMo RL's own example configs load through our loader, with NeMo's meaning for the keys we map."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from dapo.config import ConfigError, ConfigWarning, RunConfig, load_config, parse_config

NEMO = Path(__file__).resolve().parents[1] / "data" / "nemo_configs"
CONFIGS = NEMO / "examples" / "configs"
DAPO_RECIPES = sorted((CONFIGS / "recipes" / "llm").glob("dapo-*.yaml"))
NO_KL = "loss_fn.reference_policy_kl_penalty=0"


@pytest.fixture(autouse=True)
def _in_nemo_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(NEMO)  # NeMo resolves prompt files from its repository root


def _load(path: Path, *overrides: str) -> tuple[RunConfig, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(path, overrides)
    return config, [str(w.message) for w in caught if issubclass(w.category, ConfigWarning)]


def test_the_copies_are_there() -> None:
    assert len(DAPO_RECIPES) == 7
    assert (CONFIGS / "grpo_math_1B.yaml").is_file() and (CONFIGS / "grpo_math_8B.yaml").is_file()


@pytest.mark.parametrize("path", DAPO_RECIPES, ids=lambda p: p.name)
def test_every_dapo_recipe_loads_with_one_warning(path: Path) -> None:
    config, messages = _load(path)
    ignored = [m for m in messages if m.startswith("ignored NeMo RL keys")]
    assert len(ignored) == 1
    assert "policy.megatron_cfg" in ignored[0] and "logger.mlflow" in ignored[0]
    # DAPO's settings arrive with NeMo's meaning.
    assert config.loss_fn.ratio_clip_max == 0.28 and config.loss_fn.ratio_clip_c == 10
    assert config.grpo.use_dynamic_sampling and config.grpo.reward_shaping.enabled
    assert config.env.math.verifier == "dapo"  # math_verify_impl: dapo_math_verify
    assert config.env.math.workers == 16  # env.math.num_workers
    assert config.env.math.binary_reward is False  # reward_scaling [0, 1] -> [-1, 1]
    assert config.data.dataset_name == "DAPOMath17K"
    assert config.data.validation_dataset_name == "DAPOMathAIME2024"
    assert config.policy.optimizer.name == "adamw"


def test_qwen_recipe_values_follow_the_defaults_chain() -> None:
    config, _ = _load(CONFIGS / "recipes/llm/dapo-qwen2.5-7b-16n4g-fsdp2cp2.v2.yaml")
    # from the child, its parent dapo-qwen2.5-7b.v2.yaml, and the grandparent grpo_math_1B.yaml
    assert config.cluster.gpus_per_node == 4 and config.cluster.num_nodes == 16
    assert config.checkpointing.checkpoint_dir == "results/dapo-qwen2.5-7b-16n4g-fsdp2cp2"
    assert config.policy.model_name == "Qwen/Qwen2.5-Math-7B"
    assert config.grpo.num_prompts_per_step == 512 and config.grpo.batch_multiplier == 3
    assert config.grpo.num_generations_per_prompt == 16  # only the grandparent sets it
    assert config.policy.optimizer.lr == 1e-6 and config.policy.optimizer.weight_decay == 0.1
    assert config.policy.optimizer.betas == (0.9, 0.999) and config.policy.optimizer.eps == 1e-8
    assert config.policy.generation.vllm_cfg.tensor_parallel_size == 2
    assert config.policy.generation.vllm_cfg.gpu_memory_utilization == 0.7
    assert config.policy.generation.vllm_cfg.enforce_eager is True
    # ${policy.max_total_sequence_length} interpolated after the child set it
    assert config.policy.generation.vllm_cfg.max_model_len == 16384
    assert config.grpo.reward_shaping.max_response_length == 14336
    assert config.policy.hf_config_overrides == {"max_position_embeddings": 16384}
    assert config.checkpointing.metric_name == "val:accuracy" and config.checkpointing.higher_is_better
    assert config.checkpointing.keep_top_k == 5
    steps = config.policy.scheduler
    assert steps is not None and [getattr(s, "name", None) for s in steps[:2]] == [
        "torch.optim.lr_scheduler.LinearLR",
        "torch.optim.lr_scheduler.ConstantLR",
    ]
    assert steps[2].milestones == [10]  # type: ignore[union-attr]


def test_grpo_math_1b_refuses_its_kl_penalty_by_name() -> None:
    for name in ("grpo_math_1B.yaml", "grpo_math_8B.yaml"):
        with pytest.raises(ConfigError, match=r"loss_fn\.reference_policy_kl_penalty is 0\.01"):
            load_config(CONFIGS / name)


def test_grpo_math_1b_loads_without_kl_and_maps_its_keys() -> None:
    config, _ = _load(CONFIGS / "grpo_math_1B.yaml", NO_KL)
    assert config.policy.model_name == "Qwen/Qwen2.5-1.5B"
    assert config.policy.generation.max_new_tokens == 512 == config.policy.max_total_sequence_length
    assert config.policy.generation.top_k == -1  # NeMo's null
    assert config.grpo.use_leave_one_out_baseline and not config.grpo.use_dynamic_sampling
    assert config.grpo.max_num_epochs == 1
    assert config.env.math.verifier == "math_verify" and config.env.math.workers == 8
    assert config.env.math.binary_reward is True  # reward_scaling disabled: NeMo's 1/0 reward
    assert config.data.dataset_name == "OpenMathInstruct-2" and config.data.split_validation_size == 0.05
    assert config.data.max_val_samples == 256  # grpo.max_val_samples
    # sequence packing's train_mb_tokens = ${mul:max_total_sequence_length, train_micro_batch_size}
    assert config.policy.max_tokens_per_microbatch == 512 * 4
    # the prompt file's `{}` becomes our `{question}`
    assert config.data.prompt_template is not None
    assert config.data.prompt_template.startswith("Think step-by-step")
    assert "{question}" in config.data.prompt_template


def test_8b_extends_1b_and_overrides_reach_interpolations() -> None:
    config, _ = _load(CONFIGS / "grpo_math_8B.yaml", NO_KL, "policy.max_total_sequence_length=2048")
    assert config.policy.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert config.grpo.num_generations_per_prompt == 32 and config.cluster.gpus_per_node == 8
    assert config.policy.optimizer.lr == 3e-7
    assert config.policy.generation.max_new_tokens == 2048  # ${policy.max_total_sequence_length}
    assert config.policy.generation.vllm_cfg.max_model_len == 2048


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("loss_fn.use_cispo=true", "loss_fn.use_cispo"),
        ("loss_fn.sequence_level_importance_ratios=true", "loss_fn.sequence_level_importance_ratios"),
        ("loss_fn.truncated_importance_sampling_type=icepop", "loss_fn.truncated_importance_sampling_type"),
        ("grpo.adv_estimator.name=reinforce_plus_plus", "grpo.adv_estimator.name"),
        ("policy.megatron_cfg.enabled=true", "policy.megatron_cfg.enabled"),
        ("policy.dtensor_cfg.lora_cfg.enabled=true", "policy.dtensor_cfg.lora_cfg.enabled"),
        ("policy.dtensor_cfg.enabled=false", "policy.dtensor_cfg.enabled"),
        ("grpo.reward_scaling.target_min=-2.0", "grpo.reward_scaling"),
        ("policy.optimizer.name=torch.optim.SGD", "policy.optimizer.name"),
        ("env.math.math_verify_impl=other", "env.math.math_verify_impl"),
        ("grpo.max_rollout_turns=2", "grpo.max_rollout_turns"),
    ],
)
def test_keys_that_would_change_training_are_refused_by_name(override: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "recipes/llm/dapo-qwen2.5-7b.v2.yaml", [override])
    assert named in str(info.value)


def test_async_grpo_maps_to_max_staleness() -> None:
    config, _ = _load(
        CONFIGS / "recipes/llm/dapo-gemma4-e2b-it-1n8g-fsdp2-automodel.yaml",
        "grpo.async_grpo.enabled=true",
        "grpo.async_grpo.max_trajectory_age_steps=2",
    )
    assert config.grpo.max_staleness == 2
    assert config.loss_fn.use_importance_sampling_correction
    assert config.loss_fn.truncated_importance_sampling_ratio == 2


def test_a_dotted_override_of_either_clip_spelling_wins_over_the_file(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tiny_cpu.yaml"
    # tiny_cpu.yaml sets grpo.ratio_clip_min (DAPO's spelling); NeMo users override loss_fn's.
    assert load_config(shipped, ["loss_fn.ratio_clip_min=0.15"]).grpo.ratio_clip_min == 0.15
    assert load_config(shipped, ["grpo.ratio_clip_max=0.3"]).loss_fn.ratio_clip_max == 0.3
    recipe = CONFIGS / "recipes/llm/dapo-qwen2.5-7b.v2.yaml"  # sets loss_fn.ratio_clip_max
    config, _ = _load(recipe, "grpo.ratio_clip_max=0.3")
    assert config.loss_fn.ratio_clip_max == 0.3
    # Both spellings in one file, differing, are still an error.
    both = tmp_path / "both.yaml"
    both.write_text("grpo: {ratio_clip_min: 0.1}\nloss_fn: {ratio_clip_min: 0.2}\n")
    with pytest.raises(ConfigError, match="differ"):
        load_config(both)


def test_defaults_chain_errors_name_the_file(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text("defaults: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(child)
    loop = tmp_path / "loop.yaml"
    loop.write_text("defaults: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(loop)


def test_a_list_of_defaults_merges_in_order(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("grpo: {seed: 1, max_num_steps: 7}\n")
    (tmp_path / "b.yaml").write_text("grpo: {seed: 2}\n")
    (tmp_path / "c.yaml").write_text("defaults: [a.yaml, b.yaml]\ngrpo: {val_period: 3}\n")
    grpo = load_config(tmp_path / "c.yaml").grpo
    assert (grpo.seed, grpo.max_num_steps, grpo.val_period) == (2, 7, 3)


def test_bad_interpolation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="interpolation"):
        parse_config({"policy": {"model_name": "${policy.nope}"}})


def test_kl_penalty_refused_at_load_in_our_own_keys() -> None:
    with pytest.raises(ConfigError, match="reference_policy_kl_penalty"):
        load_config(None, ["loss_fn.reference_policy_kl_penalty=0.1"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["policy.scheduler=[{name: torch.optim.lr_scheduler.StepLR}]"], "StepLR"),
        (["policy.scheduler=[{name: LinearLR, kwargs: {gamma: 1}}]"], "gamma"),
        (["policy.scheduler=[{name: LinearLR}, {name: ConstantLR}]"], "milestones"),
        (["policy.scheduler=[{name: LinearLR}]", "policy.optimizer.warmup_steps=3"], "warmup_steps"),
        (["checkpointing.metric_name=accuracy"], "checkpointing.metric_name"),
        (["data.dataset_name=GSM8K", "data.train_file=x.jsonl"], "data.dataset_name"),
    ],
)
def test_bad_new_keys_name_the_field(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)

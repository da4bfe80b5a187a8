"""The run config: shipped files load, overrides land, and each kind of bad input names its key."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dapo.config import ConfigError, ConfigWarning, RunConfig, apply_overrides, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(
    [
        *ROOT.glob("examples/configs/*.yaml"),
        *ROOT.glob("deploy/**/*.yaml"),
        *ROOT.glob("helm/**/runconfig*.yaml"),
    ]
)


def _small(**extra: object) -> list[str]:
    base = [
        "policy.train_global_batch_size=16",
        "policy.train_micro_batch_size=4",
        "grpo.num_prompts_per_step=4",
        "grpo.num_generations_per_prompt=4",
    ]
    return base + [f"{k}={v}" for k, v in extra.items()]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)


def test_shipped_configs_exist() -> None:
    names = {p.name for p in SHIPPED}
    assert {"tiny_cpu.yaml", "qwen2.5_1.5b_dapo_1node.yaml", "grpo_math_8B.yaml"} <= names


def test_paper_settings_in_the_gpu_config() -> None:
    config = load_config(ROOT / "examples/configs/qwen2.5_1.5b_dapo_1node.yaml")
    assert (config.loss_fn.ratio_clip_min, config.loss_fn.ratio_clip_max, config.loss_fn.ratio_clip_c) == (
        0.2,
        0.28,
        10.0,
    )
    assert config.grpo.use_dynamic_sampling and config.grpo.reward_shaping.enabled
    assert config.loss_fn.reference_policy_kl_penalty == 0.0
    assert config.loss_fn.aggregation == "token-mean"


def test_seed_keys_under_grpo_land_in_loss_fn() -> None:
    config = load_config(None, _small() + ["grpo.ratio_clip_min=0.15", "grpo.ratio_clip_max=0.25"])
    assert config.loss_fn.ratio_clip_min == 0.15
    assert config.loss_fn.ratio_clip_max == 0.25
    assert config.grpo.ratio_clip_min == 0.15  # both spellings read the same value


def test_same_value_in_both_places_is_accepted() -> None:
    config = load_config(None, _small() + ["grpo.ratio_clip_c=3", "loss_fn.ratio_clip_c=3"])
    assert config.loss_fn.ratio_clip_c == 3


def test_overrides_parse_yaml_scalars_and_nest() -> None:
    data = apply_overrides(
        {"policy": {"optimizer": {"lr": 1.0}}},
        [
            "policy.optimizer.lr=3e-5",
            "grpo.use_dynamic_sampling=false",
            "data.format=gsm8k",
            "services.rollout_addresses=[a:1, b:2]",
        ],
    )
    assert data["policy"]["optimizer"]["lr"] == 3e-5
    assert data["grpo"]["use_dynamic_sampling"] is False
    assert data["services"]["rollout_addresses"] == ["a:1", "b:2"]


def test_override_file_values(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "grpo:\n  num_prompts_per_step: 4\n  num_generations_per_prompt: 4\n"
        "policy:\n  train_global_batch_size: 16\n  train_micro_batch_size: 4\n"
    )
    config = load_config(path, ["grpo.max_num_steps=7"])
    assert config.grpo.max_num_steps == 7 and config.grpo.num_prompts_per_step == 4


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["grpo.ratio_clip_mx=0.3"],
            "unknown key 'grpo.ratio_clip_mx' (did you mean 'grpo.ratio_clip_max'?)",
        ),
        (["polcy.model_name=x"], "unknown key 'polcy' (did you mean 'policy'?)"),
        (["loss_fn.ratio_clip_max=1.0"], "loss_fn.ratio_clip_max: Input should be less than 1 (got 1.0)"),
        (
            ["loss_fn.ratio_clip_min=-0.1"],
            "loss_fn.ratio_clip_min: Input should be greater than or equal to 0",
        ),
        (["loss_fn.ratio_clip_c=1.0"], "loss_fn.ratio_clip_c: Input should be greater than 1 (got 1.0)"),
        (
            ["grpo.ratio_clip_min=0.1", "loss_fn.ratio_clip_min=0.2"],
            "grpo.ratio_clip_min (0.1) and loss_fn.ratio_clip_min (0.2) differ",
        ),
        (
            ["policy.train_micro_batch_size=3"],
            "policy.train_global_batch_size (16) must be divisible by policy.train_micro_batch_size (3)",
        ),
        (
            ["grpo.num_prompts_per_step=3"],
            "grpo.num_prompts_per_step * grpo.num_generations_per_prompt (12) must be divisible by "
            "policy.train_global_batch_size (16)",
        ),
        (
            ["grpo.num_generations_per_prompt=0"],
            "grpo.num_generations_per_prompt: Input should be greater than",
        ),
        (["policy.precision=fp8"], "policy.precision: Input should be 'float32' or 'bfloat16'"),
        (["env.math.verifier=regex"], "env.math.verifier: Input should be"),
        (
            ["env.math.math_verify.float_rounding=-1"],
            "env.math.math_verify.float_rounding: Input should be greater than or equal to 0",
        ),
        (["env.math.math_verify.precision=3"], "unknown key 'env.math.math_verify.precision'"),
        (
            ["checkpointing.checkpoint_dir=/ckpt/{node}"],
            "checkpointing.checkpoint_dir '/ckpt/{node}': the only placeholder is {node_rank}",
        ),
        (
            ["env.math.verifier=dapo", "env.math.math_verify.strict=false"],
            "env.math.math_verify: grading options apply only to verifier math_verify, got verifier 'dapo'",
        ),
    ],
)
def test_bad_input_names_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, _small() + overrides)
    assert expected in str(excinfo.value)


def test_importance_correction_follows_staleness_by_default() -> None:
    tiny = ROOT / "examples/configs/tiny_cpu.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(tiny, ["grpo.max_staleness=1"]).loss_fn.use_importance_sampling_correction is True
        assert load_config(tiny, ["grpo.max_staleness=2"]).loss_fn.use_importance_sampling_correction is True
        assert load_config(tiny).loss_fn.use_importance_sampling_correction is False
        # An explicit choice stands when it is the safe one.
        synchronous = load_config(tiny, ["loss_fn.use_importance_sampling_correction=true"])
        assert synchronous.grpo.max_staleness == 0 and synchronous.loss_fn.use_importance_sampling_correction
    # The resolved value survives a round trip through the dumped config (what the trainer reads).
    dumped = load_config(tiny, ["grpo.max_staleness=1"]).model_dump(mode="json")
    assert dumped["loss_fn"]["use_importance_sampling_correction"] is True


def test_staleness_with_the_importance_correction_turned_off_warns() -> None:
    tiny = ROOT / "examples/configs/tiny_cpu.yaml"
    with pytest.warns(ConfigWarning, match="loss_fn.use_importance_sampling_correction") as caught:
        config = load_config(
            tiny, ["grpo.max_staleness=1", "loss_fn.use_importance_sampling_correction=false"]
        )
    assert "unstable" in str(caught[0].message)
    # A warning, not an error: the explicit false is kept.
    assert config.grpo.max_staleness == 1 and config.loss_fn.use_importance_sampling_correction is False


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["grpo.max_num_steps"])
    with pytest.raises(ConfigError, match="'policy.model_name' is a value, not a section"):
        apply_overrides({"policy": {"model_name": "m"}}, ["policy.model_name.x=1"])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config([1, 2])  # type: ignore[arg-type]


def test_every_field_is_documented() -> None:
    def walk(model: type) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                missing += walk(ann)
        return missing

    assert walk(RunConfig) == []


def test_dapo_config_cli_prints_json_and_fails_with_the_key(tmp_path: Path) -> None:
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "dapo.cli",
            "config",
            str(ROOT / "examples/configs/tiny_cpu.yaml"),
            "grpo.max_num_steps=3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(ok.stdout)["grpo"]["max_num_steps"] == 3
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "dapo.cli",
            "config",
            str(ROOT / "examples/configs/tiny_cpu.yaml"),
            "grpo.ratio_clip_mx=0.3",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert "grpo.ratio_clip_mx" in bad.stderr and "grpo.ratio_clip_max" in bad.stderr


def test_config_imports_without_torch() -> None:
    code = "import sys, dapo.config, dapo.batch, dapo.weights, dapo.v1.rollout_pb2; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_grading_options_reach_the_reward_service(tmp_path: Path) -> None:
    from dapo_reward.main import parse_settings

    assert load_config(None).env.math.math_verify.model_dump() == {
        "float_rounding": 6,
        "numeric_precision": 15,
        "strict": True,
        "allow_set_relation_comp": False,
        "string_comparison": False,
    }  # math-verify's own defaults, and no string comparison
    config = tmp_path / "run.yaml"
    config.write_text(
        "env:\n  math:\n    timeout: 3\n    math_verify: {float_rounding: 3, string_comparison: true}\n"
    )
    options = parse_settings(["--config", str(config), "--workers", "1"])
    assert (options.workers, options.timeout) == (1, 3)
    assert (options.math_verify.float_rounding, options.math_verify.string_comparison) == (3, True)
    assert options.math_verify.numeric_precision == 15
    # a dumped config (every key set) with DAPO's rule still loads: only changed grading options are an error
    dumped = load_config(None, ["env.math.verifier=dapo"]).model_dump(mode="json")
    assert parse_config(dumped).env.math.verifier == "dapo"

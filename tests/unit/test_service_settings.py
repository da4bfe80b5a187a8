"""Each service's settings: a JSON/YAML file gives the same settings as the flags, flags win over the
file, a bad file is refused naming the field, and the fields the run config has take its defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from dapo_controller.main import parse_settings as controller_settings
from dapo_controller.settings import ControllerSettings
from dapo_reward.main import parse_settings as reward_settings
from dapo_reward.settings import RewardSettings
from dapo_rollout.main import parse_settings as rollout_settings
from dapo_rollout.settings import RolloutSettings
from dapo_trainer.main import parse_settings as trainer_settings
from dapo_trainer.settings import TrainerSettings

from dapo.config import ConfigError, MathEnvConfig, ServicesConfig
from dapo.config.schema import VllmConfig
from dapo.service_settings import resolve_settings, write_settings

MODEL = str(Path(__file__).resolve().parents[2] / "examples/tiny-model")


def test_a_written_file_reads_back_as_the_settings_the_flags_gave(tmp_path: Path) -> None:
    cases = [
        (
            rollout_settings,
            ["--model", MODEL, "--port", "7001", "--seed", "3", "--no-enforce-eager", "--dtype", "bfloat16"],
        ),
        (reward_settings, ["--grpc-port", "7002", "--workers", "3", "--timeout", "9", "--cache-size", "0"]),
        (
            trainer_settings,
            [
                "--redis-url",
                "redis://127.0.0.1:1/0",
                "--publisher-port",
                "7003",
                "--redis-retry-timeout",
                "4",
            ],
        ),
        (
            controller_settings,
            ["--port", "7004", "--rollout-addresses", "a:1,b:2", "--reward-address", "c:3"],
        ),
    ]
    for parse, flags in cases:
        from_flags = parse(flags)
        path = write_settings(from_flags, tmp_path / f"{type(from_flags).__name__}.json")
        assert path.stat().st_mode & 0o077 == 0  # the owner's only
        redis_flags = ["--redis-url", "redis://127.0.0.1:1/0"] if parse is trainer_settings else []
        assert parse(["--settings", str(path), *redis_flags]) == from_flags
    assert rollout_settings(["--model", MODEL, "--enforce-eager"]).enforce_eager is True


def test_yaml_files_and_flags_over_them(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(yaml.safe_dump({"model": MODEL, "port": 7100, "seed": 5, "hf_overrides": {"a": 1}}))
    settings = rollout_settings(["--settings", str(path), "--seed", "6"])
    assert (settings.port, settings.seed, settings.hf_overrides) == (7100, 6, {"a": 1})
    assert settings.model == MODEL and settings.metrics_port == 8001  # the rest: the defaults


def test_secrets_are_not_written_and_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:pw@127.0.0.1:9/0")
    monkeypatch.setenv("DAPO_API_TOKEN", "tok")
    controller = ControllerSettings(port=1)
    trainer = TrainerSettings()
    for settings in (controller, trainer):
        path = write_settings(settings, tmp_path / "s.json")
        written = json.loads(path.read_text())
        assert "redis_url" not in written and "api_token" not in written and "pw" not in path.read_text()
        assert resolve_settings(type(settings), path) == settings  # from the environment again


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"model": MODEL, "prot": 1}, "unknown key 'prot' (did you mean 'port'?)"),
        ({"model": MODEL, "port": "many"}, "port: Input should be a valid integer"),
        ({"model": MODEL, "gpu_memory_utilization": 2}, "gpu_memory_utilization: Input should be less than"),
        ({"port": 1}, "model: required"),
        (
            {"model": MODEL, "tensor_parallel_size": 0},
            "tensor_parallel_size must be 'auto' or a whole number",
        ),
        ({"model": MODEL, "version": 2, "wait_for_weights": True}, "version (2) and wait_for_weights"),
        ({"model": str(Path(MODEL).parent)}, "no config.json there"),
    ],
)
def test_a_bad_settings_file_is_refused_naming_the_field(
    tmp_path: Path, content: dict[str, object], expected: str
) -> None:
    path = tmp_path / "rollout.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as error:
        resolve_settings(RolloutSettings, path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_a_bad_settings_file_fails_the_service_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "reward.yaml"
    path.write_text("workers: 0\n")
    with pytest.raises(SystemExit) as exc:
        reward_settings(["--settings", str(path)])
    assert exc.value.code == 2
    assert "workers: Input should be greater than or equal to 1" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_settings(RewardSettings, tmp_path / "missing.json")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve_settings(RewardSettings, path)


def test_trainer_rules_name_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match=r"redis_url \(--redis-url\) is required"):
        resolve_settings(TrainerSettings, None, {})
    with pytest.raises(ConfigError, match=r"config_path \(--config\) needs run_id"):
        resolve_settings(TrainerSettings, None, {"redis_url": "redis://x", "config_path": "c.yaml"})


def test_fields_the_run_config_has_take_its_defaults_and_bounds() -> None:
    math = MathEnvConfig()
    reward = RewardSettings()
    assert (reward.workers, reward.timeout, reward.max_response_chars, reward.math_verify) == (
        math.workers,
        math.timeout,
        math.max_response_chars,
        math.math_verify,
    )
    graded = RewardSettings.from_math(MathEnvConfig(workers=7, timeout=11), grpc_port=0)
    assert (graded.workers, graded.timeout, graded.grpc_port) == (7, 11, 0)
    with pytest.raises(ValueError, match="timeout"):
        RewardSettings(timeout=301)  # env.math.timeout's bound
    assert ControllerSettings().redis_retry_s == ServicesConfig().redis_timeout_s
    vllm = VllmConfig()
    rollout = RolloutSettings(model=MODEL)
    assert (rollout.gpu_memory_utilization, rollout.enforce_eager, rollout.dtype, rollout.max_model_len) == (
        vllm.gpu_memory_utilization,
        vllm.enforce_eager,
        vllm.precision,
        vllm.max_model_len,
    )


def test_reward_settings_take_env_math_from_a_run_config(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("env:\n  math:\n    workers: 5\n    timeout: 8\n")
    settings_file = tmp_path / "reward.json"
    settings_file.write_text(json.dumps({"timeout": 9}))
    settings = reward_settings(["--config", str(config), "--settings", str(settings_file)])
    assert (settings.workers, settings.timeout) == (5, 9)  # the file over the run config

"""`dapo run` hands each service its settings as a file: the file gives the service the settings the run
config asks for, and the launcher starts each service with `--settings FILE`, the file beside its log."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from dapo_controller.main import parse_settings as parse_controller
from dapo_reward.main import parse_settings as parse_reward
from dapo_rollout.main import parse_settings as parse_rollout
from dapo_trainer.main import parse_settings as parse_trainer

from dapo.config import load_config
from dapo.launch import services as launch
from dapo.launch.launcher import Launcher
from dapo.launch.service_process import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples/configs/tiny_cpu.yaml"
REDIS = "redis://127.0.0.1:1/0"
OVERRIDES = [
    "services.redis_timeout_s=12.5",
    "env.math.workers=3",
    "env.math.timeout=7",
    "env.math.max_response_chars=999",
    "grpo.seed=4",
    "policy.generation.vllm_cfg.gpu_memory_utilization=0.5",
    "policy.generation.vllm_cfg.enforce_eager=false",
    "policy.generation.vllm_cfg.precision=bfloat16",
    "policy.hf_config_overrides={max_position_embeddings: 4096}",
]


@pytest.mark.parametrize("overrides", [[], OVERRIDES])
def test_a_settings_file_gives_the_service_what_the_run_config_asks_for(
    overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", REDIS)
    monkeypatch.delenv("DAPO_ROLLOUT_ADDRESSES", raising=False)
    monkeypatch.delenv("DAPO_REWARD_ADDRESS", raising=False)
    config = load_config(TINY, overrides)
    pairs = [
        ("reward", parse_reward, launch.reward_settings(config, "127.0.0.1", 11, 12)),
        ("rollout", parse_rollout, launch.rollout_settings(config, 1, "127.0.0.1", 13, 14, "127.0.0.1:15")),
        ("trainer", parse_trainer, launch.trainer_settings(config, REDIS, "127.0.0.1", 15, 16)),
        (
            "controller",
            parse_controller,
            launch.controller_settings(config, REDIS, "127.0.0.1", 17, ["127.0.0.1:13"], "127.0.0.1:11"),
        ),
    ]
    for command, parse, settings in pairs:
        path = Launcher._service_args(command, command, settings, tmp_path)[2]
        assert parse(["--settings", path]) == settings, command
    reward, rollout, trainer, controller = (settings for _, _, settings in pairs)
    math_cfg, vllm = config.env.math, config.policy.generation.vllm_cfg
    assert (reward.workers, reward.timeout, reward.max_response_chars, reward.math_verify) == (
        math_cfg.workers,
        math_cfg.timeout,
        math_cfg.max_response_chars,
        math_cfg.math_verify,
    )
    assert (rollout.seed, rollout.dtype, rollout.enforce_eager, rollout.gpu_memory_utilization) == (
        config.grpo.seed + 1,
        vllm.precision,
        vllm.enforce_eager,
        vllm.gpu_memory_utilization,
    )
    assert rollout.hf_overrides == config.policy.hf_config_overrides
    assert trainer.redis_retry_s == controller.redis_retry_s == config.services.redis_timeout_s
    if overrides:
        assert (reward.workers, reward.timeout, reward.max_response_chars) == (3, 7, 999)
        assert (rollout.seed, rollout.dtype, rollout.enforce_eager) == (5, "bfloat16", False)
        assert rollout.hf_overrides == {"max_position_embeddings": 4096}
        assert trainer.redis_retry_s == 12.5


def test_the_launcher_starts_each_service_with_its_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ServiceProcess] = []
    monkeypatch.setattr(ServiceProcess, "start", lambda self: started.append(self))
    monkeypatch.setattr(Launcher, "_wait_ready", lambda self, timeout_s=60.0, logs=None: None)
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = load_config(
        TINY, ["services.redis_url=redis://:secret@127.0.0.1:1/0", "cluster.num_rollout_servers=2"]
    )
    launcher = Launcher(config, tmp_path, {})
    launcher.start()
    logs = tmp_path / "services"
    by_name = {s.name: s for s in started}
    assert list(by_name) == ["reward", "rollout-0", "rollout-1", "trainer", "controller"]
    for name, service in by_name.items():
        command = name.partition("-")[0]
        assert service.cmd == [
            sys.executable,
            "-m",
            "dapo.cli",
            command,
            "--settings",
            str(logs / f"{name}.settings.json"),
        ]
        assert service.log_path == logs / f"{name}.log"
        assert "secret" not in (logs / f"{name}.settings.json").read_text()
        assert service.env["REDIS_URL"] == "redis://:secret@127.0.0.1:1/0"  # the secret: in the environment
    read = {name: json.loads((logs / f"{name}.settings.json").read_text()) for name in by_name}
    addresses = [f"127.0.0.1:{read[f'rollout-{i}']['port']}" for i in range(2)]
    assert launcher.rollout_addresses == addresses == read["controller"]["rollout_addresses"]
    assert (
        read["controller"]["reward_address"]
        == launcher.reward_address
        == f"127.0.0.1:{read['reward']['grpc_port']}"
    )
    assert read["controller"]["port"] == launcher.controller_port
    assert launcher.weights_address == f"127.0.0.1:{read['trainer']['publisher_port']}"
    assert [read[f"rollout-{i}"]["seed"] for i in range(2)] == [config.grpo.seed, config.grpo.seed + 1]
    assert all(read[f"rollout-{i}"]["weights_address"] == launcher.weights_address for i in range(2))


def test_a_multi_rank_trainer_runs_under_torchrun_with_its_settings_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[ServiceProcess] = []
    monkeypatch.setattr(ServiceProcess, "start", lambda self: started.append(self))
    config = load_config(
        TINY, ["services.redis_url=redis://127.0.0.1:1/0", "cluster.trainer_processes_per_node=2"]
    )
    Launcher(config, tmp_path, {}).start(with_controller=False)
    [trainer] = [s for s in started if s.name == "trainer"]
    assert trainer.cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert trainer.cmd[5:] == [
        "-m",
        "dapo.cli",
        "trainer",
        "--settings",
        str(tmp_path / "services/trainer.settings.json"),
    ]

"""The `dapo` command line (typer): every command answers --help without importing torch or vLLM, the
exit statuses are the documented ones, and the flags the images, compose files and Helm chart pass
still give the same settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dapo.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = [
    "run",
    "up",
    "config",
    "make-tiny-model",
    "health",
    "slurm-plan",
    "controller",
    "rollout",
    "reward",
    "trainer",
]
HEAVY = ("torch", "vllm", "transformers", "uvicorn", "grpc", "httpx", "dapo.config.schema")
"""Not imported to answer --help (the run config schema neither: the settings models load on use)."""

PROBE = """
import contextlib, io, json, sys
from dapo.cli import main
codes, helps = {}, {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        codes[" ".join(argv)] = main(argv)
    helps[" ".join(argv)] = out.getvalue()
heavy = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"codes": codes, "helps": helps, "heavy": heavy}))
"""


def test_every_help_answers_without_importing_torch_or_vllm() -> None:
    argvs = [[], ["--help"], ["help"], *([command, "--help"] for command in COMMANDS)]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == []  # none of them was imported to answer
    assert set(report["codes"].values()) == {0}
    overview = report["helps"]["--help"]
    assert all(command in overview for command in COMMANDS) and overview == report["helps"][""]
    assert (
        "--settings" in report["helps"]["rollout --help"]
        and "--tensor-parallel-size" in report["helps"]["rollout --help"]
    )
    assert (
        "--node" in report["helps"]["slurm-plan --help"]
        and "--untrained" in report["helps"]["make-tiny-model --help"]
    )


def test_exit_statuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["--version"]) == 0
    assert main(["no-such-command"]) == 2
    assert "No such command 'no-such-command'" in capsys.readouterr().err
    assert main(["run"]) == 2  # CONFIG is required
    assert main(["config", str(ROOT / "examples/configs/tiny_cpu.yaml"), "grpo.sead=1"]) == 2
    assert "unknown key 'grpo.sead' (did you mean 'grpo.seed'?)" in capsys.readouterr().err
    assert main(["config", str(ROOT / "examples/configs/tiny_cpu.yaml"), "grpo.seed=3"]) == 0
    assert json.loads(capsys.readouterr().out)["grpo"]["seed"] == 3
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert main(["trainer"]) == 2  # no Redis URL
    assert "redis_url (--redis-url) is required" in capsys.readouterr().err
    assert main(["health", "ftp", "x"]) == 2
    assert (
        main(["slurm-plan", str(ROOT / "examples/configs/tiny_cpu.yaml"), "--node", "a", "--job-dir", "j"])
        == 2
    )
    assert "expected NAME=ADDRESS" in capsys.readouterr().err
    settings = tmp_path / "reward.json"
    settings.write_text('{"workers": "many"}')
    assert main(["reward", "--settings", str(settings)]) == 2
    assert "workers: Input should be a valid integer" in capsys.readouterr().err


def test_the_flags_of_the_images_compose_and_helm_still_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from dapo_controller.main import parse_settings as controller_settings
    from dapo_reward.main import parse_settings as reward_settings
    from dapo_rollout.main import parse_settings as rollout
    from dapo_trainer.main import parse_settings as trainer

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    model = str(ROOT / "examples/tiny-model")
    # docker/app.Dockerfile, docker-compose.yml, helm/dapo/templates/controller.yaml
    controller = controller_settings(
        [
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--rollout-addresses",
            "rollout:50051",
            "--reward-address",
            "reward:50052",
        ]
    )
    assert (controller.host, controller.port, controller.rollout_addresses) == (
        "0.0.0.0",
        8000,
        ["rollout:50051"],
    )
    assert controller.reward_address == "reward:50052"
    # docker/app.Dockerfile with compose's and reward.yaml's arguments
    reward = reward_settings(
        [
            "--host",
            "0.0.0.0",
            "--grpc-port",
            "50052",
            "--http-port",
            "8002",
            "--workers",
            "8",
            "--timeout",
            "5",
        ]
    )
    assert (reward.grpc_port, reward.http_port, reward.workers, reward.timeout) == (50052, 8002, 8, 5)
    # docker/{cpu,gpu}.Dockerfile with compose's and rollout.yaml's arguments
    server = rollout(
        ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "8001", "--model", model]
        + ["--weights-address", "trainer:50053", "--gpu-memory-utilization", "0.85"]
    )
    assert (server.port, server.metrics_port, server.weights_address, server.gpu_memory_utilization) == (
        50051,
        8001,
        "trainer:50053",
        0.85,
    )
    # the trainer images, compose, helm/dapo/templates/trainer.yaml, tests that serve one run
    rank = trainer(["--publisher-port", "50053", "--metrics-port", "8003"])
    assert (rank.publisher_port, rank.metrics_port, rank.redis_url) == (50053, 8003, "redis://127.0.0.1:1/0")
    one_run = trainer(
        ["--run-id", "r", "--config", "c.yaml", "grpo.seed=2", "--exit-when-done", "--poll-interval", "0.2"]
    )
    assert (one_run.run_id, one_run.config_path, one_run.overrides) == ("r", "c.yaml", ("grpo.seed=2",))
    assert one_run.exit_when_done and one_run.poll_interval_s == 0.2

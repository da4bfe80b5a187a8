"""The local launcher's CPU sets: rollout and trainer on disjoint CPUs (threads to match), what it says,
how it is turned off, bad settings named, and the affinity a started child (and its children) really has."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from dapo.config import ConfigError, load_config
from dapo.launch.cpu_sets import cpu_list, plan_cpu_sets
from dapo.launch.launcher import Launcher
from dapo.launch.service_process import ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples/configs/tiny_cpu.yaml"

# The child prints its own affinity and that of a grandchild it starts (vLLM's engine, torchrun's ranks).
REPORT_AFFINITY = (
    "import json, os, subprocess, sys;"
    "child = subprocess.run([sys.executable, '-c', 'import os; print(sorted(os.sched_getaffinity(0)))'],"
    " capture_output=True, text=True, check=True).stdout;"
    "print(json.dumps({'self': sorted(os.sched_getaffinity(0)), 'grandchild': json.loads(child),"
    " 'omp': os.environ.get('OMP_NUM_THREADS')}), flush=True)"
)


def test_two_cpus_give_one_each() -> None:
    plan = plan_cpu_sets(load_config(TINY, []), cpus=[0, 1])
    assert plan.rollout == frozenset({0}) and plan.trainer == frozenset({1})
    assert plan.shared == plan.rollout  # reward and controller stay off the trainer's CPU
    assert plan.threads(plan.rollout) == {"OMP_NUM_THREADS": "1"}
    assert plan.threads(plan.trainer) == {"OMP_NUM_THREADS": "1"}
    assert "rollout server(s), reward service and controller on CPU 0" in plan.message
    assert "trainer on CPU 1" in plan.message and "cluster.cpu_affinity_enabled=false" in plan.message


def test_more_cpus_split_by_the_setting_with_threads_per_rank() -> None:
    config = load_config(TINY, ["cluster.rollout_cpus=2"])
    plan = plan_cpu_sets(config, cpus=[2, 3, 4, 5, 6, 7], trainer_ranks=2)
    assert plan.rollout == frozenset({2, 3}) and plan.trainer == frozenset({4, 5, 6, 7})
    assert plan.threads(plan.rollout) == {"OMP_NUM_THREADS": "2"}
    assert plan.threads(plan.trainer, 2) == {"OMP_NUM_THREADS": "2"}
    assert "trainer on CPU 4-7 (2 rank(s), OMP_NUM_THREADS=2)" in plan.message
    default = plan_cpu_sets(load_config(TINY, []), cpus=[0, 1, 2, 3, 4])
    assert default.rollout == frozenset({0, 1}) and default.trainer == frozenset({2, 3, 4})


@pytest.mark.parametrize(
    ("overrides", "cpus", "reason"),
    [
        (["cluster.cpu_affinity_enabled=false"], [0, 1, 2, 3], "CPU affinity off"),
        (["cluster.gpus_per_node=2"], [0, 1, 2, 3], "a GPU run"),
        ([], [0], "only 1 usable CPU"),
    ],
)
def test_left_alone(overrides: list[str], cpus: list[int], reason: str) -> None:
    plan = plan_cpu_sets(load_config(TINY, overrides), cpus=cpus)
    assert (plan.rollout, plan.trainer, plan.shared) == (None, None, None)
    assert reason in plan.message
    assert plan.threads(plan.trainer) == {}


def test_a_rollout_set_that_leaves_the_trainer_nothing_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cluster.rollout_cpus \(2\) must leave the trainer") as info:
        plan_cpu_sets(load_config(TINY, ["cluster.rollout_cpus=2"]), cpus=[0, 1])
    assert "0-1" in str(info.value)
    with pytest.raises(ConfigError, match="cluster.rollout_cpus"):
        load_config(TINY, ["cluster.rollout_cpus=0"])
    with pytest.raises(ConfigError, match="cluster.cpu_affinity_enabled"):
        load_config(TINY, ["cluster.cpu_affinity_enabled=sometimes"])


def test_cpu_list_writes_ranges() -> None:
    assert cpu_list(frozenset({0, 1, 2, 3, 6, 8, 9})) == "0-3,6,8-9"
    assert cpu_list(frozenset({5})) == "5"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
@pytest.mark.parametrize("nice", [0, 4])
def test_a_started_child_and_its_children_run_on_their_set(tmp_path: Path, nice: int) -> None:
    cpu = max(os.sched_getaffinity(0))
    service = ServiceProcess(
        "probe",
        [sys.executable, "-c", REPORT_AFFINITY],
        tmp_path / "probe.log",
        env={"OMP_NUM_THREADS": "1"},
        nice=nice,
        cpus=frozenset({cpu}),
    )
    service.start()
    assert service.process is not None and service.process.wait(30) == 0
    report = json.loads(service.log_path.read_text().splitlines()[-1])
    assert report == {"self": [cpu], "grandchild": [cpu], "omp": "1"}
    # The launcher's own affinity is untouched.
    assert len(os.sched_getaffinity(0)) >= 2


def test_the_launcher_pins_each_service_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started: list[ServiceProcess] = []
    monkeypatch.setattr(ServiceProcess, "start", lambda self: started.append(self))
    monkeypatch.setattr("dapo.launch.cpu_sets.usable_cpus", lambda: [0, 1])
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = load_config(TINY, ["services.redis_url=redis://127.0.0.1:1/0"])
    launcher = Launcher(config, tmp_path, {})
    launcher.start(with_controller=False)
    by_name = {s.name: s for s in started}
    assert set(by_name) == {"reward", "rollout-0", "trainer"}
    assert by_name["rollout-0"].cpus == frozenset({0}) and by_name["reward"].cpus == frozenset({0})
    assert by_name["trainer"].cpus == frozenset({1})
    assert all(s.env["OMP_NUM_THREADS"] == "1" for s in started)
    controller = launcher._controller_service(tmp_path, [sys.executable])
    assert controller.cpus == frozenset({0})
    assert "trainer on CPU 1" in capsys.readouterr().err

    started.clear()
    off = Launcher(
        load_config(TINY, ["services.redis_url=redis://127.0.0.1:1/0", "cluster.cpu_affinity_enabled=false"]),
        tmp_path,
        {},
    )
    off.start(with_controller=False)
    assert all(s.cpus is None and "OMP_NUM_THREADS" not in s.env for s in started)
    assert "CPU affinity off" in capsys.readouterr().err

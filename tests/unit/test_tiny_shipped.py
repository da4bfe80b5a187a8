"""The warm-started tiny models shipped in `examples/` are what `dapo make-tiny-model` builds:
`examples/tiny-model` (`--task addition`) and `examples/tiny-reasoning-model` (`--task column-addition`).

The full builds take minutes on 2 cores, so the tests check the shipped files against each build's own
report instead of rebuilding: the weights' SHA-256, the recipe (the task's default warm start and the
model config), the task data (regenerated here from the seed) and the reported greedy accuracy
(re-measured here on the same problems).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import require_module

require_module("transformers", "the train extra installs it")

from dapo.tiny.model import MODEL_CONFIG  # noqa: E402
from dapo.tiny.sft import default_warm_start, file_sha256  # noqa: E402
from dapo.tiny.task import to_row  # noqa: E402
from dapo.tiny.tasks import get_task  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SHIPPED = {"addition": EXAMPLES / "tiny-model", "column-addition": EXAMPLES / "tiny-reasoning-model"}


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request: pytest.FixtureRequest) -> tuple[str, Path, dict]:
    task, path = request.param, SHIPPED[request.param]
    return task, path, json.loads((path / "warm_start.json").read_text())


def test_shipped_weights_are_the_reported_build_of_the_default_recipe(
    shipped: tuple[str, Path, dict],
) -> None:
    task, path, report = shipped
    assert report.get("task", "addition") == task
    assert report["model_sha256"] == file_sha256(path / "model.safetensors")
    assert report["warm_start"] == asdict(default_warm_start(task))
    config = json.loads((path / "config.json").read_text())
    # transformers files rope_theta under rope_parameters; every other key is written as given
    config["rope_theta"] = config.get("rope_parameters", config).get("rope_theta")
    expected = {**MODEL_CONFIG, **get_task(task).model_config}
    assert {key: config.get(key) for key in MODEL_CONFIG} == expected


def test_shipped_task_data_is_the_seeded_split(shipped: tuple[str, Path, dict], tmp_path: Path) -> None:
    task, path, report = shipped
    train, test = get_task(task).write_task_data(tmp_path, report["seed"], 500)
    assert train.read_bytes() == (path / "data" / "train.jsonl").read_bytes()
    assert test.read_bytes() == (path / "data" / "test.jsonl").read_bytes()


def test_shipped_model_has_the_reported_greedy_accuracy(shipped: tuple[str, Path, dict]) -> None:
    from dapo.tiny.evaluate import evaluate_accuracy

    task, path, report = shipped
    tiny_task = get_task(task)
    _, test = tiny_task.split_problems(report["seed"], 500)
    rows = [to_row(p, i) for i, p in enumerate(test[: report["num_eval_problems"]])]
    result = evaluate_accuracy(
        path,
        rows,
        greedy=True,
        max_new_tokens=tiny_task.eval_max_new_tokens,
        final_answer=tiny_task.final_answer,
    )
    # The same weights decoded greedily; a near-tie may fall the other way on another thread count.
    assert abs(result.accuracy - report["greedy_accuracy"]) <= 0.01, (result.accuracy, report)

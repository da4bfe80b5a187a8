"""The warm-started tiny model shipped in `examples/tiny-model` is what `dapo make-tiny-model` builds.

The full build takes about 8 minutes on 2 cores, so the tests check the shipped files against the
build's own report instead of rebuilding: the weights' SHA-256, the recipe (the default warm start and
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
from dapo.tiny.sft import WarmStartConfig, file_sha256  # noqa: E402
from dapo.tiny.task import to_row, write_task_data  # noqa: E402

SHIPPED = Path(__file__).resolve().parents[2] / "examples" / "tiny-model"


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads((SHIPPED / "warm_start.json").read_text())


def test_shipped_weights_are_the_reported_build_of_the_default_recipe(report: dict) -> None:
    assert report["model_sha256"] == file_sha256(SHIPPED / "model.safetensors")
    assert report["warm_start"] == asdict(WarmStartConfig())
    config = json.loads((SHIPPED / "config.json").read_text())
    # transformers files rope_theta under rope_parameters; every other key is written as given
    config["rope_theta"] = config.get("rope_parameters", config).get("rope_theta")
    assert {key: config.get(key) for key in MODEL_CONFIG} == MODEL_CONFIG


def test_shipped_task_data_is_the_seeded_split(report: dict, tmp_path: Path) -> None:
    train, test = write_task_data(tmp_path, seed=report["seed"])
    assert train.read_bytes() == (SHIPPED / "data" / "train.jsonl").read_bytes()
    assert test.read_bytes() == (SHIPPED / "data" / "test.jsonl").read_bytes()


def test_shipped_model_has_the_reported_greedy_accuracy(report: dict) -> None:
    from dapo.tiny.evaluate import evaluate_accuracy
    from dapo.tiny.task import split_problems

    _, test = split_problems(report["seed"])
    rows = [to_row(p, i) for i, p in enumerate(test[: report["num_eval_problems"]])]
    result = evaluate_accuracy(SHIPPED, rows, greedy=True)
    # The same weights decoded greedily; a near-tie may fall the other way on another thread count.
    assert abs(result.accuracy - report["greedy_accuracy"]) <= 0.01, (result.accuracy, report)

"""data.dataset_name reads local copies of DAPO-Math-17k, OpenMathInstruct-2, GSM8K and MATH in their
published formats (no download); data.split_validation_size holds out part of the training prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dapo.config import load_config
from dapo.data import DataError, load_from_config
from tests.hf_cache import fake_hub_cache

DATA = Path(__file__).resolve().parents[1] / "data"


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "datasets"
    monkeypatch.setenv("DAPO_DATASETS_DIR", str(root))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    verl = [json.loads(line) for line in (DATA / "verl_rows.jsonl").read_text().splitlines() if line]
    for row in verl:  # as published: string answers
        row["reward_model"]["ground_truth"] = str(row["reward_model"]["ground_truth"])
    _write_parquet(root / "DAPOMath17K" / "data" / "dapo-math-17k.parquet", verl)
    nemo = [json.loads(line) for line in (DATA / "nemo_rows.jsonl").read_text().splitlines() if line]
    rows = [{**r, "generated_solution": "...", "problem_source": "math"} for r in nemo]
    _write_parquet(root / "OpenMathInstruct-2" / "data" / "train-00000-of-00001.parquet", rows)
    gsm = (DATA / "gsm8k_rows.jsonl").read_text()
    (root / "GSM8K" / "main").mkdir(parents=True)
    (root / "GSM8K" / "main" / "train.jsonl").write_text(gsm)
    (root / "GSM8K" / "main" / "test.jsonl").write_text(gsm.splitlines()[0] + "\n")
    math_row = {
        "problem": "What is $1+1$?",
        "level": "Level 1",
        "type": "Algebra",
        "solution": "So $\\boxed{\\frac{4}{2}}$.",
    }
    (root / "MATH" / "algebra").mkdir(parents=True)
    (root / "MATH" / "algebra" / "train.jsonl").write_text(json.dumps(math_row) + "\n")
    return root


def _rows(*overrides: str, validation: bool = False):  # noqa: ANN202
    config = load_config(None, list(overrides))
    return load_from_config(config.data, validation=validation, seed=config.grpo.seed)


def test_each_named_dataset_reads_its_local_copy(local: Path) -> None:
    dapo = _rows("data.dataset_name=DAPOMath17K")
    assert dapo[0].messages[-1]["content"] == "What is 37+48?" and dapo[0].ground_truth == "85"
    assert _rows("data.dataset_name=DAPO-Math-17k") == dapo  # the hub name works too
    omi = _rows("data.dataset_name=OpenMathInstruct-2")
    assert omi[1].ground_truth == "\\frac{3}{4}"
    gsm = _rows("data.dataset_name=GSM8K")
    assert len(gsm) == len((DATA / "gsm8k_rows.jsonl").read_text().splitlines())  # the train split only
    assert gsm[0].ground_truth.replace(".", "").isdigit()
    (math,) = _rows("data.dataset_name=MATH")
    assert math.ground_truth == "\\frac{4}{2}"  # the last \boxed{} of the solution


def test_a_dataset_in_the_hf_cache(local: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "train.jsonl").write_text((DATA / "verl_rows.jsonl").read_text())
    snapshot = fake_hub_cache(tmp_path / "hf", "BytedTsinghua-SIA/AIME-2024", copy)
    (snapshot.parents[1]).rename(snapshot.parents[2] / "datasets--BytedTsinghua-SIA--AIME-2024")
    rows = _rows(
        "data.train_file=" + str(DATA / "verl_rows.jsonl"),
        "data.validation_dataset_name=DAPOMathAIME2024",
        validation=True,
    )
    assert rows[0].ground_truth == "85"


def test_a_missing_dataset_says_how_to_provide_it(local: Path) -> None:
    with pytest.raises(DataError, match="huggingface-cli download --repo-type dataset openai/gsm8k"):
        (local / "GSM8K").rename(local / "gone")
        _rows("data.dataset_name=GSM8K")
    with pytest.raises(DataError, match="not a known dataset"):
        _rows("data.dataset_name=NoSuchSet")


def test_split_validation_size_holds_out_prompts(local: Path) -> None:
    overrides = ("data.dataset_name=OpenMathInstruct-2", "data.split_validation_size=0.5")
    train, val = _rows(*overrides), _rows(*overrides, validation=True)
    assert len(train) == len(val) == 1
    assert {r.id for r in train}.isdisjoint({r.id for r in val})
    assert _rows(*overrides) == train  # seeded: the same split every time

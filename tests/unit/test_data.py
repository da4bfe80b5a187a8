"""Data loaders (verl/NeMo, GSM8K, MATH rows), their errors, and the resumable prompt cursor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dapo.config.schema import DataConfig
from dapo.data import DataError, PromptCursor, PromptRow, gsm8k_final_answer, load_from_config, load_prompts
from tests.conftest import require_module

DATA = Path(__file__).parent.parent / "data"


def test_reads_verl_rows() -> None:
    rows = load_prompts(DATA / "verl_rows.jsonl")
    assert rows[0] == PromptRow("0", [{"role": "user", "content": "What is 37+48?"}], "85")
    assert rows[1].messages[0] == {"role": "system", "content": "Answer with a number."}
    assert rows[1].ground_truth == "109"  # a numeric ground truth becomes a string


def test_reads_nemo_problem_expected_answer_rows() -> None:
    rows = load_prompts(DATA / "nemo_rows.jsonl")
    assert [r.ground_truth for r in rows] == ["4", "\\frac{3}{4}"]
    assert rows[0].messages == [{"role": "user", "content": "What is 2+2?"}]
    assert [r.id for r in rows] == ["0", "1"]


def test_reads_gsm8k_rows_and_extracts_the_final_number() -> None:
    rows = load_prompts(DATA / "gsm8k_rows.jsonl", format="gsm8k")
    assert [r.ground_truth for r in rows] == ["18", "3", "70000"]  # "70,000" loses its separator
    assert rows[0].messages[0]["content"].startswith("Janet")
    assert load_prompts(DATA / "gsm8k_rows.jsonl") == rows  # auto-detected


def test_reads_math_rows_keeping_latex_and_unique_ids() -> None:
    rows = load_prompts(DATA / "math_rows.jsonl")
    assert rows[0].ground_truth == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert rows[0].id == "test/precalculus/807.json"


def test_prompt_template_applies_to_the_question(tmp_path: Path) -> None:
    template = "{question}\nPut the final answer in \\boxed{{}}."
    rows = load_prompts(DATA / "gsm8k_rows.jsonl", prompt_template=template, limit=1)
    assert len(rows) == 1
    content = rows[0].messages[0]["content"]
    assert content.startswith("Janet") and content.endswith("\nPut the final answer in \\boxed{}.")
    verl = load_prompts(DATA / "verl_rows.jsonl", prompt_template="Q: {question}")
    assert verl[1].messages == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "Q: What is 10+99?"},
    ]


def test_example_samples_load() -> None:
    root = Path(__file__).parent.parent.parent / "examples" / "data"
    assert len(load_prompts(root / "gsm8k_sample.jsonl")) == 50
    assert len(load_prompts(root / "math500_sample.jsonl")) == 50


def test_load_from_config(tmp_path: Path) -> None:
    config = DataConfig(
        train_file=str(DATA / "verl_rows.jsonl"),
        validation_file=str(DATA / "math_rows.jsonl"),
        max_val_samples=2,
    )
    assert len(load_from_config(config)) == 2
    assert len(load_from_config(config, validation=True)) == 2
    assert load_from_config(DataConfig(train_file="x.jsonl"), validation=True) == []


def test_gsm8k_final_answer() -> None:
    assert gsm8k_final_answer("so 2+2=4\n#### 1,234,567") == "1234567"
    assert gsm8k_final_answer("#### -3.5 ") == "-3.5"
    with pytest.raises(ValueError, match="####"):
        gsm8k_final_answer("no marker")


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*nope.jsonl"):
        load_prompts(tmp_path / "nope.jsonl")


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, ['{"question": "q", "answer": "#### 1"}', "", '{"question": oops}'])
    with pytest.raises(DataError, match="bad JSON at line 3"):
        load_prompts(path)


def test_missing_field_names_row_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [json.dumps({"question": "q", "answer": "#### 1"}), json.dumps({"question": "only a question"})],
    )
    with pytest.raises(DataError, match="row 1 lacks field 'answer'"):
        load_prompts(path)
    verl = _write(tmp_path, [json.dumps({"prompt": [{"role": "user", "content": "q"}], "reward_model": {}})])
    with pytest.raises(DataError, match="row 0 lacks field 'ground_truth'"):
        load_prompts(verl)


def test_gsm8k_answer_without_marker_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, [json.dumps({"question": "q", "answer": "it is 4"})])
    with pytest.raises(DataError, match=r"row 0: field 'answer' .*####"):
        load_prompts(path)


def test_bad_messages_and_unknown_format(tmp_path: Path) -> None:
    path = _write(
        tmp_path, [json.dumps({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}})]
    )
    with pytest.raises(DataError, match=r"prompt\[0\].content"):
        load_prompts(path)
    unknown = _write(tmp_path, [json.dumps({"text": "hello"})])
    with pytest.raises(DataError, match="cannot detect the row format"):
        load_prompts(unknown)
    with pytest.raises(DataError, match="format must be one of"):
        load_prompts(unknown, format="csv")  # type: ignore[arg-type]


def test_duplicate_ids_and_bad_template(tmp_path: Path) -> None:
    row = json.dumps({"problem": "p", "answer": "1", "unique_id": "a"})
    with pytest.raises(DataError, match="row 1 has id 'a', the same as row 0"):
        load_prompts(_write(tmp_path, [row, row]))
    with pytest.raises(DataError, match="prompt_template"):
        load_prompts(DATA / "math_rows.jsonl", prompt_template="{problem}")


def test_parquet_rows_in_verl_format(tmp_path: Path) -> None:
    pq = require_module("pyarrow.parquet", "pyarrow is a dependency of dapo")
    import pyarrow as pa

    rows = [
        {
            "data_source": "arithmetic",
            "prompt": [{"role": "user", "content": "What is 1+2?"}],
            "reward_model": {"style": "rule", "ground_truth": "3"},
            "extra_info": {"index": 0},
        },
        {
            "data_source": "arithmetic",
            "prompt": [{"role": "user", "content": "What is 2+2?"}],
            "reward_model": {"style": "rule", "ground_truth": "4"},
            "extra_info": {"index": 1},
        },
    ]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    loaded = load_prompts(path)
    assert [(r.id, r.messages[0]["content"], r.ground_truth) for r in loaded] == [
        ("0", "What is 1+2?", "3"),
        ("1", "What is 2+2?", "4"),
    ]


def test_corrupt_parquet_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="rows.parquet"):
        load_prompts(path)


def _rows(n: int) -> list[PromptRow]:
    return [PromptRow(str(i), [{"role": "user", "content": f"q{i}"}], str(i)) for i in range(n)]


def test_cursor_covers_each_epoch_once_and_reshuffles() -> None:
    cursor = PromptCursor(_rows(10), seed=3, shuffle=True)
    first, second = cursor.take(10), cursor.take(10)
    assert sorted(r.id for r in first) == sorted(r.id for r in second) == sorted(str(i) for i in range(10))
    assert [r.id for r in first] != [r.id for r in second]
    assert cursor.state()["epoch"] == 1
    assert [r.id for r in PromptCursor(_rows(5), shuffle=False).take(7)] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "0",
        "1",
    ]


def test_cursor_resumes_exactly() -> None:
    rows = _rows(7)
    original = PromptCursor(rows, seed=11)
    original.take(5)
    original.take(4)  # crosses into epoch 1
    state = json.loads(json.dumps(original.state()))  # survives persistence
    resumed = PromptCursor.from_state(rows, state)
    assert [r.id for r in resumed.take(12)] == [r.id for r in original.take(12)]
    assert PromptCursor(rows, seed=11).take(9) == PromptCursor(rows, seed=11).take(9)


def test_cursor_state_errors() -> None:
    state = PromptCursor(_rows(4)).state()
    with pytest.raises(DataError, match="4 rows but the data now has 5"):
        PromptCursor.from_state(_rows(5), state)
    with pytest.raises(DataError, match="lacks field 'position'"):
        PromptCursor.from_state(_rows(4), {"epoch": 0, "seed": 0, "shuffle": True})
    with pytest.raises(DataError, match="at least one row"):
        PromptCursor([])

"""The warm start (a very short one here), its report and data files, evaluation, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_module

require_module("transformers", "the train extra installs it")

from dapo.tiny.sft import WarmStartConfig, file_sha256, make_tiny_model  # noqa: E402

SHORT = WarmStartConfig(
    num_steps=3, batch_size=8, warmup_steps=1, decay_steps=1, num_eval_problems=6, num_eval_samples=2
)


def test_short_warm_start_is_deterministic_and_writes_everything(tmp_path: Path) -> None:
    first = make_tiny_model(tmp_path / "a", seed=0, config=SHORT, num_test=50, log=None)
    make_tiny_model(tmp_path / "b", seed=0, config=SHORT, num_test=50, log=None)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "data" / "test.jsonl").read_bytes() == (b / "data" / "test.jsonl").read_bytes()
    assert len((a / "data" / "train.jsonl").read_text().splitlines()) == 8050
    report = json.loads((a / "warm_start.json").read_text())
    for key in ("greedy_accuracy", "sampled_accuracy", "fraction_mixed_groups"):
        assert 0.0 <= report[key] <= 1.0
        assert report[key] == first[key]
    assert report["num_eval_problems"] == 6 and report["num_samples"] == 2
    assert report["model_sha256"] == file_sha256(a / "model.safetensors")
    assert len(report["model_sha256"]) == 64
    # the warm start changed the weights
    from dapo.tiny.model import build_untrained_model

    untrained = build_untrained_model(tmp_path / "untrained", seed=0)
    assert (untrained / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()


def test_evaluate_accuracy_counts_groups(tiny_model_dir: Path) -> None:
    from dapo.tiny.evaluate import evaluate_accuracy
    from dapo.tiny.task import Problem, to_row

    rows = [to_row(Problem(10 + i, 20 + i), i) for i in range(3)]
    sampled = evaluate_accuracy(tiny_model_dir, rows, greedy=False, num_samples=4, max_new_tokens=3)
    assert sampled.num_prompts == 3 and sampled.num_samples == 4
    assert len(sampled.num_correct_per_prompt) == 3
    assert sampled.fraction_mixed + sampled.fraction_all_wrong + sampled.fraction_all_right == pytest.approx(
        1
    )
    again = evaluate_accuracy(tiny_model_dir, rows, greedy=False, num_samples=4, max_new_tokens=3)
    assert again == sampled  # seeded
    with pytest.raises(ValueError, match="num_samples must be 1"):
        evaluate_accuracy(tiny_model_dir, rows, greedy=True, num_samples=2)
    with pytest.raises(ValueError, match="not a model directory"):
        evaluate_accuracy(tiny_model_dir / "missing", rows)


def test_evaluate_model_scores_exact_matches() -> None:
    """A stub model that always answers the same tokens: right on one row, wrong on the other."""
    import torch

    from dapo.tiny.evaluate import evaluate_model

    class Tokenizer:
        padding_side = "right"
        eos_token_id = pad_token_id = 0

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):  # type: ignore[no-untyped-def]
            return messages[-1]["content"]

        def __call__(self, texts, **kwargs):  # type: ignore[no-untyped-def]
            return {"input_ids": torch.ones((len(texts), 2), dtype=torch.long)}

        def batch_decode(self, ids, skip_special_tokens):  # type: ignore[no-untyped-def]
            return [" 85 "] * len(ids)

    class Model:
        training = False

        def eval(self) -> None: ...

        def train(self, mode: bool) -> None: ...

        def generate(self, input_ids, num_return_sequences, **kwargs):  # type: ignore[no-untyped-def]
            return torch.ones((input_ids.shape[0] * num_return_sequences, 4), dtype=torch.long)

    rows = [
        {"prompt": [{"role": "user", "content": "What is 37+48?"}], "reward_model": {"ground_truth": "85"}},
        {"prompt": [{"role": "user", "content": "What is 10+10?"}], "reward_model": {"ground_truth": "20"}},
    ]
    result = evaluate_model(Model(), Tokenizer(), rows, greedy=False, num_samples=3)
    assert result.accuracy == pytest.approx(0.5)
    assert result.num_correct_per_prompt == [3, 0]
    assert (result.fraction_all_right, result.fraction_all_wrong, result.fraction_mixed) == (0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="row 0 lacks field"):
        evaluate_model(Model(), Tokenizer(), [{"question": "q"}])


def test_warm_start_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="no_carry_fraction"):
        WarmStartConfig(no_carry_fraction=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        WarmStartConfig(batch_size=0)


def test_cli_untrained_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dapo.cli import main

    assert main(["make-tiny-model", str(tmp_path / "m"), "--untrained"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert not (tmp_path / "m" / "data").exists()
    assert main(["make-tiny-model", str(tmp_path / "m"), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err

"""`dapo rollout`'s flags: tensor parallelism defaults to every visible GPU, and bad values are refused
with the flag's name."""

from __future__ import annotations

from pathlib import Path

import pytest
from dapo_rollout.main import parse_settings, tensor_parallel_size

MODEL = str(Path(__file__).resolve().parents[2] / "examples/tiny-model")


def test_tensor_parallel_defaults_to_every_visible_gpu() -> None:
    args = parse_settings(["--model", MODEL])
    assert args.tensor_parallel_size == "auto"
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 1
    assert tensor_parallel_size("auto") == visible  # every visible GPU; 1 on CPU
    assert (
        tensor_parallel_size(4) == 4
        and parse_settings(["--model", MODEL, "--tensor-parallel-size", "2"]).tensor_parallel_size == 2
    )


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_tensor_parallel_size_is_refused(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_settings(["--model", MODEL, "--tensor-parallel-size", value])
    assert exc.value.code == 2
    assert "'--tensor-parallel-size': must be 'auto' or a whole number >= 1" in capsys.readouterr().err

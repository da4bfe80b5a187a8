"""The checks of the GPU test, on CPU: the probe reports what the ranks really ran with, and
`gpu_run_problems` names every claim a gloo/CPU fallback breaks (and a compute dtype that differs)."""

from __future__ import annotations

from pathlib import Path

from tests.integration.trainer_probe import gpu_run_problems, run_probe


def test_the_gpu_checks_name_a_gloo_cpu_fallback(tmp_path: Path, tiny_model_dir: Path) -> None:
    ranks = run_probe(tiny_model_dir, tmp_path / "probe", "bfloat16", num_ranks=1)
    [facts] = ranks
    # What a CPU run is: gloo, CPU tensors; the mixed-precision policy holds there too.
    assert (facts["backend"], facts["param_devices"], facts["optimizer_state_devices"]) == (
        "gloo",
        ["cpu"],
        ["cpu"],
    )
    assert facts["master_dtypes"] == facts["optimizer_state_dtypes"] == ["torch.float32"]
    assert facts["forward_param_dtypes"] == facts["forward_activation_dtypes"] == ["torch.bfloat16"]
    assert gpu_run_problems(ranks, "bfloat16", world_size=1) == [
        "rank 0: backend is gloo, expected nccl",
        "rank 0: param_devices is ['cpu'], expected ['cuda']",
        "rank 0: optimizer_state_devices is ['cpu'], expected ['cuda']",
        "rank 0: torch.cuda.max_memory_allocated() is 0",
    ]
    # A run that computed in bfloat16 does not pass for a float32 one, nor one rank for two.
    float32_problems = gpu_run_problems(ranks, "float32", world_size=2)
    assert "1 ranks reported, expected 2" in float32_problems
    assert (
        "rank 0: forward_param_dtypes is ['torch.bfloat16'], expected ['torch.float32']" in float32_problems
    )
    assert (
        "rank 0: forward_activation_dtypes is ['torch.bfloat16'], expected ['torch.float32']"
        in float32_problems
    )

#!/usr/bin/env bash
# Set up (scripts/install.sh) and run a real DAPO training run on CPU of the tiny model in examples/tiny-model.
# Extra arguments are config overrides, e.g. `bash scripts/run_tiny_cpu.sh grpo.max_num_steps=10`; a first
# `--config FILE` runs another config, e.g. examples/configs/tiny_reasoning_cpu.yaml (the reasoning task).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install.sh
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
config=examples/configs/tiny_cpu.yaml
if [[ "${1:-}" == "--config" ]]; then
  config="${2:?--config needs a file}"
  shift 2
fi
exec .venv/bin/dapo run "$config" "$@"

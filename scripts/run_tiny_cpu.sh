#!/usr/bin/env bash
# Set up (scripts/install.sh), build the tiny model once, and run a real DAPO training run on CPU.
# Extra arguments are config overrides, e.g. `bash scripts/run_tiny_cpu.sh grpo.max_num_steps=10`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install.sh
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
[ -f .cache/tiny-model/model.safetensors ] || .venv/bin/dapo make-tiny-model .cache/tiny-model
exec .venv/bin/dapo run examples/configs/tiny_cpu.yaml "$@"

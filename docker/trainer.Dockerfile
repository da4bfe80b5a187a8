# The trainer service on NVIDIA GPUs: CUDA, torch and vLLM from the `gpu` extra.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dapo ./dapo
COPY services ./services
RUN pip install ".[gpu]" && useradd --create-home --uid 10001 dapo
USER dapo
EXPOSE 50053 8003 29500
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=6 CMD ["dapo", "health", "grpc", "127.0.0.1:50053"]
ENTRYPOINT ["torchrun"]
CMD ["--nproc_per_node=gpu", "-m", "dapo.cli", "trainer", "--publisher-port", "50053", "--metrics-port", "8003"]

# The controller and the reward service (targets `controller`, `reward`): dapo's base install (no torch)
# and wandb, with which the controller logs runs live when logger.wandb_enabled is set.
# Build args: PYTHON_IMAGE (a Python 3.10+ Debian-like base; scripts/offline-images.sh makes a stand-in).
# Build secret `pip_ca`: a CA bundle for pip behind a TLS-intercepting proxy (empty file: none).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv && useradd --create-home --uid 10001 dapo \
    && mkdir -p /results && chown dapo /results
WORKDIR /app
# Dependencies first (from pyproject.toml alone), so a change in the code reuses this layer.
COPY pyproject.toml docker/requirements.py ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    python3 requirements.py wandb > requirements.txt && pip install -r requirements.txt
COPY README.md ./
COPY dapo ./dapo
COPY services ./services
COPY examples ./examples
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    pip install --no-deps . && dapo --help >/dev/null
USER dapo

FROM base AS controller
EXPOSE 8000
ENTRYPOINT ["dapo", "controller", "--host", "0.0.0.0", "--port", "8000"]

FROM base AS reward
EXPOSE 50052 8002
ENTRYPOINT ["dapo", "reward", "--host", "0.0.0.0", "--grpc-port", "50052", "--http-port", "8002"]

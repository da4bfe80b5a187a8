# The reward service: the base install only (no deep-learning stack).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dapo ./dapo
COPY services ./services
RUN pip install . && useradd --create-home --uid 10001 dapo
USER dapo
EXPOSE 50052 8002
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["dapo", "health", "grpc", "127.0.0.1:50052"]
ENTRYPOINT ["dapo", "reward", "--host", "0.0.0.0", "--grpc-port", "50052", "--http-port", "8002"]

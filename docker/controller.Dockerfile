# The controller service: the base install only (no deep-learning stack).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dapo ./dapo
COPY services ./services
COPY examples ./examples
RUN pip install . && useradd --create-home --uid 10001 dapo
USER dapo
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["dapo", "health", "http", "http://127.0.0.1:8000/readyz"]
ENTRYPOINT ["dapo", "controller", "--host", "0.0.0.0", "--port", "8000"]

"""Property-based fuzzing of the controller's OpenAPI spec with schemathesis, against a live server.

Every operation gets up to 30 generated requests (half of those on a path with a run id aim at a run
that exists, so the handlers past the 404 are reached too). No request may get a 5xx, and every answer
must match the spec: a documented status code, content type, headers and body schema. A streamed
answer (Server-Sent Events) can fail after its 200 went out, so the server's own error log must stay
empty too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import schemathesis
from dapo_controller.settings import ControllerSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import checks

from tests.integration.controller_server import running_controller

SMALL = {
    "policy": {"train_global_batch_size": 16, "train_micro_batch_size": 4},
    "grpo": {"num_prompts_per_step": 4, "num_generations_per_prompt": 4},
}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@contextmanager
def _server_errors() -> Iterator[list[str]]:
    """Errors the in-process server logs (an exception inside a handler or a stream), while open."""
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(self.format(record))

    handler = Collect(level=logging.ERROR)
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield errors
    finally:
        logger.removeHandler(handler)


def _fuzz(url: str, run_id: str, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:
        strategy = operation.as_strategy()
        if "{run_id}" in operation.path:

            def known(case):  # type: ignore[no-untyped-def]
                case.path_parameters = {**(case.path_parameters or {}), "run_id": run_id}
                return case

            strategy = st.one_of(strategy, strategy.map(known))

        @given(case=strategy)
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:  # type: ignore[no-untyped-def]
            try:
                case.call_and_validate(timeout=10, headers=headers, checks=CHECKS)
            except Exception as exc:  # collect, so one run reports every operation that fails
                failures.append(f"{case.method} {case.formatted_path}: {exc}")

        check()
    return failures


def test_no_request_in_the_spec_gets_a_server_error_or_breaks_the_spec(redis_server) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    with running_controller(ControllerSettings(redis_url=redis_server.url, run_loop=False)) as url:
        # An ended run: its event stream replays and closes, so fuzzing it cannot hang.
        run_id = httpx.post(f"{url}/v1/runs", json={"config": SMALL}).json()["id"]
        httpx.post(f"{url}/v1/runs/{run_id}/stop").raise_for_status()
        with _server_errors() as errors:
            assert _fuzz(url, run_id, headers={}) == []
        assert errors == []
    assert time.monotonic() - started < 90


def test_fuzzing_with_a_token_configured_finds_only_documented_answers(redis_server) -> None:  # type: ignore[no-untyped-def]
    settings_ = ControllerSettings(redis_url=redis_server.url, run_loop=False, api_token="s3cret")
    with running_controller(settings_) as url:
        headers = {"Authorization": "Bearer s3cret"}
        run_id = httpx.post(f"{url}/v1/runs", json={"config": SMALL}, headers=headers).json()["id"]
        httpx.post(f"{url}/v1/runs/{run_id}/stop", headers=headers).raise_for_status()
        with _server_errors() as errors:
            assert _fuzz(url, run_id, headers={}) == []  # no token: POSTs answer the documented 401
        assert errors == []

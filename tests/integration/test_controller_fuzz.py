"""Property-based fuzzing of the controller's OpenAPI spec: no request it describes gets a 5xx."""

from __future__ import annotations

import schemathesis
from dapo_controller.settings import ControllerSettings
from hypothesis import HealthCheck, given, settings

from tests.integration.controller_server import running_controller


def test_no_request_in_the_spec_gets_a_server_error(redis_server) -> None:  # type: ignore[no-untyped-def]
    with running_controller(ControllerSettings(redis_url=redis_server.url, run_loop=False)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 6
        failures: list[str] = []
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call(timeout=10)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
                    )

            check()
        assert failures == []

"""Schema-driven fuzzing of the whole API (schemathesis): no input may cause a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from engine.settings import Settings
from service.app import create_app
from tests.conftest import authorize, issue_key, keyed, upload


@pytest.fixture
def fuzzed_app(tmp_path, redis_url, redis_conn, binary_model):  # returns (app, key)
    """The app with one registered model; waits are zero so explain answers 202 at once."""
    settings_ = keyed(
        Settings(
            redis_url=redis_url,
            model_dir=tmp_path / "models",
            default_wait_s=0.0,
            max_wait_s=0.0,
            max_model_bytes=256 * 1024,
            ready_requires_workers=False,  # no workers here: /readyz is about Redis and the stores
        ),
        tmp_path,
    )
    app = create_app(settings_)
    key = issue_key(settings_)
    assert upload(authorize(app.test_client(), key), binary_model).status_code == 201
    return app, key


def test_no_input_causes_a_server_error(fuzzed_app):
    """Whatever the fuzzer sends to any operation in openapi.yaml, the answer is never a 5xx."""
    app, key = fuzzed_app
    schema = schemathesis.openapi.from_wsgi("/openapi.yaml", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            if "name" in (case.path_parameters or {}) and case.path_parameters["name"][:1] in "aeiou":
                # Aim part of the traffic at the registered model so its handlers run, not just 404s.
                case.path_parameters["name"] = "credit"
            # With a key of every scope, so the fuzzer reaches the handlers and not only the 401s.
            response = case.call(headers={"Authorization": f"Bearer {key}"})
            case.validate_response(response, checks=[not_a_server_error])

        run()

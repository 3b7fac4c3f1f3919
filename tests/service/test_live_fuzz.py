"""schemathesis against a LIVE gunicorn server (client/launcher.py), with a fixed example budget.

The in-process fuzz (test_fuzz.py) covers the WSGI app; this one covers what only a real server shows: HTTP
parsing by gunicorn, chunked bodies, headers, and the contract as a client sees it over a socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from client.launcher import free_port, start_api, stop_processes
from tests.conftest import server_keys, upload_http, wait_until_live, with_db

ROOT = Path(__file__).resolve().parents[2]
HEADERS: dict[str, str] = {}  # the live server's key, set by the fixture
EXAMPLES = 6  # per operation: the whole run stays near a minute on two shared cores


@pytest.fixture
def live_api(tmp_path, redis_url, binary_model) -> Iterator[str]:
    """gunicorn serving the app on a free port, one model registered over HTTP."""
    port = free_port()
    keys_env, headers = server_keys(tmp_path)
    HEADERS.update(headers)
    env = {
        **os.environ,
        **keys_env,
        "PYTHONPATH": str(ROOT),
        "ONNXPLAIN_REDIS_URL": with_db(redis_url, 5),
        "ONNXPLAIN_MODEL_DIR": str(tmp_path / "models"),
        "ONNXPLAIN_AUDIT_DIR": str(tmp_path / "audits"),
        "ONNXPLAIN_DEFAULT_WAIT_S": "0",
        "ONNXPLAIN_MAX_WAIT_S": "0",
        "ONNXPLAIN_MAX_MODEL_BYTES": str(256 * 1024),
        "ONNXPLAIN_API_WORKERS": "1",
        "ONNXPLAIN_READY_REQUIRES_WORKERS": "false",  # no workers here: /readyz would be a (correct) 503
    }
    proc = start_api(env, port=port, workers=1)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(base, proc)
        upload_http(base, binary_model, HEADERS)
        yield base
    finally:
        stop_processes([proc])
        HEADERS.clear()


def _parameters_only(operation: schemathesis.APIOperation) -> bool:
    """True when the operation takes no body: every schema-valid request must then be accepted."""
    return operation.body.is_empty if hasattr(operation.body, "is_empty") else not list(operation.body)


@pytest.mark.live
def test_live_server_survives_the_contract_fuzz(live_api):
    """Every operation, fuzzed over HTTP: no 5xx, every status, content type and body as documented, and
    schema-valid requests of body-less operations are accepted (no "valid request rejected")."""
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.yaml")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures: list[str] = []
    for operation in operations:
        checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
        if _parameters_only(operation) and operation.method.upper() in ("GET", "DELETE"):
            checks.append(positive_data_acceptance)

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            if "name" in (case.path_parameters or {}) and case.path_parameters["name"][:1] in "aeiou":
                case.path_parameters["name"] = "credit"  # reach the registered model's handlers too
            response = case.call(base_url=live_api, timeout=30, headers=HEADERS)
            case.validate_response(response, checks=checks)  # noqa: B023 (run() is called in this iteration)

        try:
            run()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)

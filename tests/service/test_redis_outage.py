"""Chaos: a stalled Redis (``DEBUG SLEEP``) never holds the API: 503 with Retry-After fast, predictions go on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis

from client.launcher import start_redis
from engine.settings import Settings
from service.app import create_app
from tests.conftest import authorize, issue_key, keyed, upload
from tests.contract import ValidatingClient

HEADERS: dict[str, str] = {}  # the server's key, set by the fixture

STALL_S = 6
PASSWORD = "stall-test-password"  # like `onnxplain up`'s Redis: answers must never show it
DEADLINE_S = 2.0  # the issue's bound: an answer within 2 s while Redis is stalled


@pytest.fixture
def stallable(tmp_path, binary_model) -> Iterator[tuple[str, Redis]]:
    """A live (threaded werkzeug) API over its own Redis, which allows DEBUG SLEEP."""
    from werkzeug.serving import make_server

    server = start_redis(extra_args=("--enable-debug-command", "yes"), password=PASSWORD)
    # No workers here: readiness is about Redis and the stores (ONNXPLAIN_READY_REQUIRES_WORKERS=false).
    plain = Settings(
        redis_url=server.url, model_dir=tmp_path / "models", default_wait_s=0.0, ready_requires_workers=False
    )
    settings = keyed(plain, tmp_path)
    app = create_app(settings)
    app.test_client_class = ValidatingClient
    key = issue_key(settings)
    HEADERS["Authorization"] = f"Bearer {key}"
    assert upload(authorize(app.test_client(), key), binary_model).status_code == 201
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", Redis.from_url(server.url, socket_timeout=STALL_S + 10)
    finally:
        httpd.shutdown()
        server.stop()


@pytest.mark.slow
def test_a_stalled_redis_answers_503_fast_and_predictions_go_on(stallable):
    """During DEBUG SLEEP: /readyz and explain submissions 503 with Retry-After within 2 s; /livez and predict 200."""
    base, redis = stallable
    explain = {"instances": [[0.1, 0.2, 0.3, 0.4]], "method": "exact", "wait": 0}
    assert httpx.get(f"{base}/readyz").status_code == 200
    stall = threading.Thread(target=redis.execute_command, args=("DEBUG", "SLEEP", STALL_S))
    stall.start()
    time.sleep(0.5)  # let the server enter its sleep
    with httpx.Client(
        base_url=base, timeout=DEADLINE_S, headers=HEADERS
    ) as client:  # a slower answer raises ReadTimeout
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        assert ready.json()["status"] == "unavailable"
        assert "127.0.0.1" not in ready.text and PASSWORD not in ready.text
        submitted = client.post("/v1/models/credit:explain", json=explain)
        assert submitted.status_code == 503 and submitted.headers["Retry-After"]
        assert submitted.json()["code"] == "unavailable" and "127.0.0.1" not in submitted.text
        assert PASSWORD not in submitted.text
        assert client.get("/livez").status_code == 200
        assert client.post("/v1/models/credit:predict", json={"instances": [[0.1, 0.2, 0.3, 0.4]]}).status_code == 200
    assert stall.is_alive(), "the stall ended before the checks: they proved nothing"
    stall.join()
    # Recovery: the same process answers normally once Redis is back.
    assert httpx.get(f"{base}/readyz").status_code == 200
    assert httpx.post(f"{base}/v1/models/credit:explain", json=explain, timeout=10, headers=HEADERS).status_code == 202

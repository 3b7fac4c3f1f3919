"""Health, contract and factory."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis

from client.launcher import start_redis
from engine.settings import Settings
from service.app import create_app
from tests.conftest import authorize, issue_key, keyed
from tests.contract import SPEC_PATH


def test_readyz_is_503_naming_each_queue_without_a_live_worker(client):
    """Redis and the stores fine but no worker: not ready, and the body says which queues lack one."""
    assert client.get("/livez").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.headers["Retry-After"]
    checks = ready.json["checks"]
    assert checks["redis"] == "ok" and checks["model_store"] == "ok" and checks["audit_store"] == "ok"
    assert checks["workers:interactive"] == "no live worker" and checks["workers:batch"] == "no live worker"
    assert ready.json["queues"]["interactive"]["live_workers"] == 0


def test_readyz_is_200_with_live_workers_on_every_queue(live_client):
    """The session's two real workers listen on both queues: ready, each queue's workers counted."""
    deadline = time.monotonic() + 60
    ready = live_client.get("/readyz")
    both = ("ok (2 live)", "ok (2 live)")
    while time.monotonic() < deadline and (  # workers register once they have started
        ready.status_code != 200
        or (ready.json["checks"]["workers:interactive"], ready.json["checks"]["workers:batch"]) != both
    ):
        time.sleep(0.2)
        ready = live_client.get("/readyz")
    assert ready.status_code == 200, ready.json
    assert ready.json["checks"]["workers:interactive"] == "ok (2 live)"
    assert ready.json["checks"]["workers:batch"] == "ok (2 live)"
    assert set(ready.json["queues"]) == {"interactive", "batch"}


def test_readyz_can_leave_the_workers_out(settings, redis_conn):
    """ready_requires_workers=False: an API host's readiness follows Redis and its stores only."""
    app = create_app(settings.replace(ready_requires_workers=False))
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200 and not any(k.startswith("workers:") for k in ready.json["checks"])


def test_readyz_is_503_when_the_model_store_is_not_a_directory(settings, redis_conn, tmp_path):
    """A model store that cannot be read as a directory makes readiness 503 naming it."""
    app = create_app(settings.replace(ready_requires_workers=False))
    store = app.extensions["onnxplain"].registry.root
    store.rename(tmp_path / "moved")
    store.write_text("not a directory")
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["model_store"] == "unreadable"


def _status_and_text(response: Any) -> tuple[int, str]:
    return response.status_code, response.get_data(as_text=True)


def test_livez_never_touches_redis(tmp_path):
    """With no Redis at all, /livez is 200 and /readyz 503."""
    client = create_app(Settings(redis_url="redis://127.0.0.1:1/0", model_dir=tmp_path)).test_client()
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 503


@pytest.mark.slow
def test_readyz_and_metrics_answer_fast_while_redis_stalls(tmp_path):
    """During DEBUG SLEEP, /readyz answers 503 and /metrics 200 (``onnxplain_redis_up 0``) within 2 s; ready after."""
    server = start_redis(extra_args=("--enable-debug-command", "yes"))
    try:
        settings = Settings(redis_url=server.url, model_dir=tmp_path / "models", ready_requires_workers=False)
        client = create_app(settings).test_client()
        assert client.get("/readyz").status_code == 200  # connected before the stall
        staller = Redis.from_url(server.url, socket_timeout=20)
        stall = threading.Thread(target=staller.execute_command, args=("DEBUG", "SLEEP", 8))
        stall.start()
        time.sleep(0.3)
        answers: list[tuple[int, str]] = []
        for path in ("/readyz", "/metrics"):
            probe = threading.Thread(target=lambda p=path: answers.append(_status_and_text(client.get(p))))
            probe.start()
            probe.join(timeout=2.0)
            assert not probe.is_alive(), path
        assert [status for status, _ in answers] == [503, 200]
        assert "onnxplain_redis_up 0.0" in answers[1][1] and "onnxplain_http_requests_total" in answers[1][1]
        assert stall.is_alive(), "the stall ended before the checks: they proved nothing"
        stall.join()
        assert client.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_readyz_is_503_without_redis(tmp_path):
    """A Redis that does not answer makes readiness 503 quickly, naming the check."""
    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", model_dir=tmp_path))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"].startswith("unavailable")


def test_explain_without_redis_is_503(tmp_path, binary_model):
    """With Redis down, explain answers 503 problem+json with Retry-After, never 500."""
    import io

    settings = keyed(Settings(redis_url="redis://127.0.0.1:1/0", model_dir=tmp_path / "models"), tmp_path)
    client = authorize(create_app(settings).test_client(), issue_key(settings))
    client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(binary_model.onnx_bytes), "m"),
            "card": binary_model.card_json(),
            "background": (io.BytesIO(binary_model.background_csv()), "b"),
        },
        content_type="multipart/form-data",
    )
    response = client.post("/v1/models/credit:explain", json={"instances": [[1, 2, 3, 4]], "method": "kernel_shap"})
    assert response.status_code == 503 and response.json["code"] == "unavailable"
    assert response.headers["Retry-After"]


def test_factory_is_not_testing_by_default(tmp_path):
    """create_app builds a non-testing app from explicit settings."""
    assert not create_app(Settings(model_dir=tmp_path)).testing


def test_every_route_is_in_the_spec_and_every_spec_path_is_routed(app):
    """The URL map and openapi.yaml name the same paths and methods."""
    spec = yaml.safe_load(SPEC_PATH.read_text())
    documented = {
        (path, method.upper())
        for path, item in spec["paths"].items()
        for method in item
        if method in {"get", "post", "put", "delete", "patch"}
    }
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = re.sub(rf"<(?:\w+:)?{arg}>", f"{{{arg}}}", path)  # <name>, <int:row>, <model_name:name>
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routed.add((path, method))
    assert routed == documented


def test_spec_is_served_and_valid(client):
    """/openapi.yaml is the file on disk and a valid OpenAPI 3.1 document; /docs renders."""
    from openapi_spec_validator import validate

    served = client.get("/openapi.yaml")
    assert served.data == SPEC_PATH.read_bytes()
    validate(yaml.safe_load(served.data))


def test_docs_page_uses_only_local_swagger_ui_assets(app):
    """/docs is Swagger UI over /openapi.yaml; every script, style and icon it names is ours and answers 200."""
    anonymous = app.test_client()  # public: no key
    page = anonymous.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'url: "/openapi.yaml"' in html and "persistAuthorization: true" in html
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert referenced and all(ref.startswith("/docs/assets/") for ref in referenced), referenced
    expected = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
    for ref in referenced:
        asset = anonymous.get(ref)
        assert asset.status_code == 200, ref
        assert asset.mimetype == expected[ref[ref.rindex(".") :]], (ref, asset.mimetype)
        assert len(asset.data) > 100
    bundle = anonymous.get("/docs/assets/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle
    assert anonymous.get("/docs/assets/oauth2-redirect.html").status_code == 404  # only the page's files
    assert anonymous.get("/docs/assets/..%2Fswagger-ui.css").status_code == 404


def test_the_contract_has_a_bearer_scheme_for_the_docs_page():
    """The page's Authorize button comes from the contract's bearer scheme, required by default."""
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/docs"]["get"]["security"] == []


@pytest.mark.slow
def test_readyz_follows_a_killed_workers_heartbeat(tmp_path, redis_url):
    """A worker killed without stopping (SIGKILL) stops counting once its last beat is older than worker_ttl_s."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import with_db

    url = with_db(redis_url, 7)
    Redis.from_url(url).flushdb()
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "ONNXPLAIN_REDIS_URL": url, "ONNXPLAIN_MODEL_DIR": str(tmp_path / "models")}
    env["ONNXPLAIN_WORKER_TTL_S"] = "17"  # an idle beat every 2 s
    env["PYTHONPATH"] = str(root)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker", "--sweep-interval", "0", "--job-monitoring-interval", "1"],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        settings = Settings(redis_url=url, model_dir=tmp_path / "models", worker_ttl_s=17)
        client = create_app(settings).test_client()
        assert _poll_ready(client, "ok (1 live)", 60), "the worker never registered"
        worker.send_signal(signal.SIGKILL)  # no chance to unregister: only the beats' age tells
        worker.wait(timeout=10)
        assert _poll_ready(client, "no live worker", 30), "the dead worker still counts as live"
        assert client.get("/readyz").status_code == 503
    finally:
        if worker.poll() is None:
            worker.kill()
        Redis.from_url(url).flushdb()


def _poll_ready(client: Any, interactive: str, timeout: float) -> bool:
    """Poll /readyz until its interactive queue's worker check reads ``interactive``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").json["checks"].get("workers:interactive") == interactive:
            return True
        time.sleep(0.2)
    return False

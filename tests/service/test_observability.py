"""Metrics under a real gunicorn with two workers, request ids into the real workers' log lines, JSON logs."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client.launcher import free_port, start_api, stop_processes
from tests.conftest import server_keys, wait_until_live
from tests.service.test_variants_api import mlp  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parents[2]
HEADERS: dict[str, str] = {}  # the server's key, set by the fixture
MODEL = "obs-metrics"


@pytest.fixture
def gunicorn_api(tmp_path, worker_env, binary_model) -> Iterator[str]:
    """gunicorn with two workers over the store and Redis the session's real workers use; one model registered."""
    port = free_port()
    keys_env, headers = server_keys(tmp_path)
    HEADERS.update(headers)
    env = {
        **os.environ,
        **keys_env,
        "PYTHONPATH": str(ROOT),
        "ONNXPLAIN_REDIS_URL": worker_env["ONNXPLAIN_REDIS_URL"],
        "ONNXPLAIN_MODEL_DIR": worker_env["ONNXPLAIN_MODEL_DIR"],
        "ONNXPLAIN_AUDIT_DIR": worker_env["ONNXPLAIN_AUDIT_DIR"],
        "ONNXPLAIN_DEFAULT_WAIT_S": "30",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes its own, as in production
    proc = start_api(env, port=port, workers=2)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(base, proc, timeout=90.0)
        files = {
            "model": ("m.onnx", io.BytesIO(binary_model.onnx_bytes)),
            "background": ("b.csv", io.BytesIO(binary_model.background_csv())),
        }
        card = binary_model.card_json(name=MODEL)
        response = httpx.post(f"{base}/v1/models", files=files, data={"card": card}, timeout=60, headers=HEADERS)
        assert response.status_code in (201, 409), response.text  # 409: an earlier test's version of the name
        yield base
    finally:
        stop_processes([proc])
        HEADERS.clear()


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def scrape(base: str) -> Samples:
    """GET /metrics on a new connection (any gunicorn worker may answer) and parse it with Prometheus's parser."""
    response = httpx.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def scrape_client(client: Any) -> Samples:
    """GET /metrics through a Flask test client and parse it."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return parse(response.get_data(as_text=True))


def parse(text: str) -> Samples:
    """Samples by name, then by sorted label pairs, as Prometheus's text parser reads them."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for key, v in samples.get(name, {}).items() if wanted <= set(key))


def test_metrics_count_requests_of_every_gunicorn_worker_and_the_workers_jobs(gunicorn_api):
    """Every scrape, whichever of the two API processes answers it, counts all requests and the real jobs."""
    base = gunicorn_api
    before = scrape(base)
    livez_before = value(before, "onnxplain_http_requests_total", route="/livez", method="GET", status="200")
    jobs_before = value(
        before, "onnxplain_job_duration_seconds_count", kind="explain", method="exact", outcome="succeeded"
    )
    for _ in range(12):  # a new connection each: gunicorn's two workers share them
        assert httpx.get(f"{base}/livez", headers={"Connection": "close"}).status_code == 200
    body = {"instances": [[0.1, 0.2, 0.3, float(uuid.uuid4().int % 1000)]], "method": "exact", "wait": 30}
    explained = httpx.post(f"{base}/v1/models/{MODEL}:explain", json=body, headers=HEADERS, timeout=60)
    assert explained.status_code == 200, explained.text
    assert explained.headers["X-Cache"] == "miss"
    unauthorized = httpx.get(f"{base}/v1/models", headers={"Connection": "close"})
    assert unauthorized.status_code == 401
    for _ in range(6):  # several scrapes: each of the two processes answers some, and each must see everything
        after = scrape(base)
        livez = value(after, "onnxplain_http_requests_total", route="/livez", method="GET", status="200")
        assert livez - livez_before == 12
        assert value(after, "onnxplain_http_requests_total", route="/v1/models", method="GET", status="401") >= 1
        assert value(after, "onnxplain_http_request_duration_seconds_count", route="/livez") >= 12
        explain_route = "/v1/models/{name}:explain"
        assert value(after, "onnxplain_http_requests_total", route=explain_route, status="200") >= 1
        jobs = value(after, "onnxplain_job_duration_seconds_count", kind="explain", method="exact", outcome="succeeded")
        assert jobs - jobs_before == 1
        assert value(after, "onnxplain_redis_up") == 1
        assert value(after, "onnxplain_workers_live", queue="interactive") == 2
        assert ("queue", "batch") in {k[0] for k in after["onnxplain_queue_depth"]}
        assert value(after, "onnxplain_queue_oldest_job_age_seconds", queue="interactive") >= 0
        # The job's worker loaded the model (or found it warm): the engine's tallies came through Redis.
        assert value(after, "onnxplain_session_cache_total", role="worker") >= 1
        assert "onnxplain_model_load_seconds_count" in after


def test_request_id_round_trip_into_the_jobs_log_lines(live_client, binary_model, worker_logs):
    """X-Request-ID comes back on the response and is in the real worker's JSON line for the job it submitted."""
    from tests.conftest import upload

    assert upload(live_client, binary_model, name="obs-request-id").status_code in (201, 409)
    request_id = f"obs-{uuid.uuid4().hex[:12]}"
    body = {"instances": [[0.5, 0.1, 0.2, float(uuid.uuid4().int % 1000)]], "method": "exact"}
    response = live_client.post("/v1/models/obs-request-id:explain", json=body, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.json
    assert response.headers["X-Request-ID"] == request_id
    job_id = response.headers["X-Job-Id"]
    lines: list[dict[str, object]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the worker writes its line as the job ends, maybe after the answer
        lines = [
            line
            for path in worker_logs.glob("worker-*.log")
            for line in _json_lines(path)
            if line.get("request_id") == request_id
        ]
        if any(line.get("logger") == "onnxplain.job" for line in lines):
            break
        time.sleep(0.1)
    job_lines = [line for line in lines if line.get("logger") == "onnxplain.job"]
    assert len(job_lines) == 1, lines
    assert job_lines[0]["job_id"] == job_id and job_lines[0]["outcome"] == "succeeded"
    assert job_lines[0]["kind"] == "explain" and job_lines[0]["method"] == "exact"


def _json_lines(path: Path) -> list[dict[str, object]]:
    out = []
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue  # a line being written right now
    return out


@pytest.mark.parametrize("sent", ["", "has space", "x" * 65, "-leading-dash", 'quote"d'])
def test_an_unusable_request_id_is_replaced_never_echoed(client, sent):
    """A missing, long or odd X-Request-ID is replaced by a fresh id, on refused requests too."""
    headers = {"X-Request-ID": sent} if sent else {}
    for path in ("/livez", "/v1/models"):
        got = client.get(path, headers=headers).headers["X-Request-ID"]
        assert got != sent and len(got) == 32 and all(c in "0123456789abcdef" for c in got)


def test_a_usable_request_id_comes_back_on_errors_too(app):
    """A valid id is returned on a 401 and on a 404 as on a 200."""
    anonymous = app.test_client()
    for path, status in (("/livez", 200), ("/v1/models", 401), ("/nowhere", 404)):
        response = anonymous.get(path, headers={"X-Request-ID": "abc.DEF:12-3"})
        assert response.status_code == status and response.headers["X-Request-ID"] == "abc.DEF:12-3"


def test_one_json_line_per_request(client, caplog):
    """Each request logs one JSON line naming its route template, status, tenant and request id."""
    from engine.logs import JsonFormatter

    with caplog.at_level("INFO"):
        client.get("/v1/models/none-such", headers={"X-Request-ID": "line-test-1"})
    lines = [json.loads(JsonFormatter().format(record)) for record in caplog.records]
    mine = [line for line in lines if line.get("request_id") == "line-test-1"]
    assert len(mine) == 1
    assert mine[0]["logger"] == "onnxplain.request" and mine[0]["status"] == 404
    assert mine[0]["route"] == "/v1/models/{name}" and mine[0]["tenant"] == "acme"
    assert mine[0]["path"] == "/v1/models/none-such"


def test_variant_and_audit_submissions_are_counted(client, binary_model, mlp):  # noqa: F811 (the fixture)
    """/metrics (in-process registry here) counts accepted variant builds by kind and accepted audits."""
    from tests.conftest import upload
    from tests.service.test_variants_api import _register

    def counts() -> tuple[float, float]:
        samples = scrape_client(client)
        return (
            value(samples, "onnxplain_variants_requested_total", kind="int8_dynamic"),
            value(samples, "onnxplain_audits_submitted_total"),
        )

    before = counts()
    _register(client, mlp, "obs-variant")
    assert client.post("/v1/models/obs-variant/variants", json={"kind": "int8_dynamic"}).status_code == 202
    assert upload(client, binary_model, name="obs-audit").status_code == 201
    rows = [dict(zip(binary_model.card["features"], map(float, x), strict=True)) for x in binary_model.X[:5]]
    assert client.post("/v1/audits", json={"model": "obs-audit", "method": "linear", "rows": rows}).status_code == 202
    after = counts()
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)


def test_an_unknown_method_counts_as_other_not_as_a_series_of_its_own(client):
    """Each token a client sends as the method would otherwise make a Prometheus series of its own."""
    before = value(scrape_client(client), "onnxplain_http_requests_total", route="unmatched", method="OTHER")
    for token in ("FROB", "XYZZY", "PROPFIND"):
        assert client.open("/nowhere", method=token).status_code == 404
    samples = scrape_client(client)
    assert value(samples, "onnxplain_http_requests_total", route="unmatched", method="OTHER") == before + 3
    methods = {dict(key)["method"] for key in samples["onnxplain_http_requests_total"]}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER"}


def test_json_log_lines_keep_their_timestamp_format_and_take_any_field():
    """The per-second timestamp cache writes what isoformat writes; fields orjson refuses still make a line."""
    import logging
    from datetime import UTC, datetime

    from engine.logs import JsonFormatter

    formatter = JsonFormatter()
    for created in (1764000000.0, 1764000000.0004999, 1764000000.9995, 1764000000.999999, 1764000001.25, 0.5):
        record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
        record.created = created
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert json.loads(formatter.format(record))["ts"] == expected
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m %s", ("x",), None)
    record.fields = {"huge": 2**70, "path": Path("/p"), 3: "int key"}  # type: ignore[attr-defined]
    line = json.loads(formatter.format(record))
    assert line["message"] == "m x" and line["huge"] == 2**70 and line["path"] == "/p" and line["3"] == "int key"

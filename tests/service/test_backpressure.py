"""Backpressure through HTTP with a real Redis: full queues answer 503 with Retry-After; unrun jobs expire."""

from __future__ import annotations

import time

from rq.job import Job

from service.app import create_app
from tests.conftest import authorize, issue_key, upload
from tests.contract import ValidatingClient


def _client(settings):
    app = create_app(settings)
    app.test_client_class = ValidatingClient
    return authorize(app.test_client(), issue_key(settings))


def test_a_full_interactive_queue_answers_503_with_retry_after(settings, redis_conn, binary_model):
    """With no worker and a cap of 2, the third distinct explanation is refused; a repeat of a queued one is not."""
    client = _client(settings.replace(interactive_queue_cap=2, queue_full_retry_after_s=7))
    assert upload(client, binary_model).status_code == 201

    def explain(row: int):
        body = {"instances": binary_model.X[row : row + 1].tolist(), "method": "kernel_shap", "wait": 0}
        return client.post("/v1/models/credit:explain", json=body)

    assert [explain(i).status_code for i in range(2)] == [202, 202]
    full = explain(2)
    assert full.status_code == 503 and full.json["code"] == "queue_full"
    assert full.headers["Retry-After"] == "7"
    # The refused request leaves no cache entry behind: every one names a job that exists.
    cached = [redis_conn.get(key) for key in redis_conn.scan_iter("onnxplain:cache:*")]
    assert len(cached) == 2 and all(redis_conn.exists(Job.key_for(job_id.decode())) for job_id in cached)
    repeat = explain(0)  # already queued: answered from the cache, needs no room
    assert repeat.status_code == 202 and repeat.json["cache"] == "hit"


def test_a_full_batch_queue_refuses_an_audit_and_stores_nothing(settings, redis_conn, binary_model, tmp_path):
    """An audit needs a slot per chunk plus its merge: too many for the cap is 503 before anything is stored."""
    audit_dir = tmp_path / "audits"
    client = _client(settings.replace(batch_queue_cap=3, audit_chunk_rows=2, audit_dir=audit_dir))
    assert upload(client, binary_model).status_code == 201
    names = binary_model.card["features"]
    rows = [dict(zip(names, map(float, x), strict=True)) for x in binary_model.X[:6]]  # 3 chunks + merge = 4
    refused = client.post("/v1/audits", json={"model": "credit", "rows": rows, "method": "kernel_shap"})
    assert refused.status_code == 503 and refused.json["code"] == "queue_full" and refused.headers["Retry-After"]
    assert not audit_dir.exists() or [p.name for p in audit_dir.iterdir() if p.name != ".tmp"] == []
    fits = client.post("/v1/audits", json={"model": "credit", "rows": rows[:4], "method": "kernel_shap"})
    assert fits.status_code == 202


def test_an_unrun_interactive_job_expires(settings, redis_conn, binary_model):
    """A queued explanation no worker took expires after its queued TTL (plus its run time), then is 404."""
    client = _client(settings.replace(interactive_queued_ttl_s=1, job_timeout_s=1))
    assert upload(client, binary_model).status_code == 201
    body = {"instances": binary_model.X[:1].tolist(), "method": "kernel_shap", "wait": 0}
    job_id = client.post("/v1/models/credit:explain", json=body).json["id"]
    assert 0 < redis_conn.ttl(Job.key_for(job_id)) <= 2
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{job_id}").status_code != 404:
        assert time.monotonic() < deadline, "the queued job never expired"
        time.sleep(0.2)
    again = client.post("/v1/models/credit:explain", json=body)  # the cache does not point at the expired job
    assert again.json["cache"] == "miss" and again.json["id"] != job_id

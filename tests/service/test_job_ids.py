"""Random job ids, the per-tenant result cache and Idempotency-Key, through HTTP with a real Redis."""

from __future__ import annotations

import io
import re
import threading

from redis import Redis

from tests.conftest import authorize, issue_key, poll

BODY_KEYS = {"method": "kernel_shap", "parameters": {"nsamples": 256, "seed": 3}}


def shared_model(client, built, name: str = "credit") -> None:
    data = {
        "model": (io.BytesIO(built.onnx_bytes), "m.onnx"),
        "card": built.card_json(name=name),
        "background": (io.BytesIO(built.background_csv()), "b.csv"),
        "visibility": "shared",
    }
    assert client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201


def explain(client, built, name: str = "credit", wait: float = 0, **headers: str):
    body = {"instances": built.X[:1].tolist(), **BODY_KEYS, "wait": wait}
    return client.post(f"/v1/models/{name}:explain", json=body, headers=headers)


def test_job_ids_are_random_not_derived_from_the_payload(client, binary_model, redis_conn):
    """The same payload, on an emptied Redis, gets a new id each time: nothing about the id follows from it."""
    shared_model(client, binary_model)
    ids = []
    for _ in range(2):
        response = explain(client, binary_model)
        assert response.status_code == 202 and response.json["cache"] == "miss"
        ids.append(response.json["id"])
        redis_conn.flushdb()
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"explain-[0-9a-f]{32}", i) for i in ids)


def test_identical_requests_share_a_job_within_a_tenant_only(app, settings, binary_model, redis_conn):
    """Tenant a's repeat is a cache hit on its job; tenant b's identical request is a miss with a job of its own."""
    a = authorize(app.test_client(), issue_key(settings, "a"))
    b = authorize(app.test_client(), issue_key(settings, "b"))
    shared_model(a, binary_model)
    first, again, other = explain(a, binary_model), explain(a, binary_model), explain(b, binary_model)
    assert (first.headers["X-Cache"], again.headers["X-Cache"], other.headers["X-Cache"]) == ("miss", "hit", "miss")
    assert again.json["id"] == first.json["id"] != other.json["id"]
    assert b.get(f"/v1/jobs/{first.json['id']}").status_code == 404
    assert a.delete(f"/v1/jobs/{first.json['id']}").json["status"] == "canceled"
    fresh = explain(a, binary_model)  # a canceled job is never served from the cache
    assert fresh.json["cache"] == "miss" and fresh.json["id"] != first.json["id"]


def test_simultaneous_identical_requests_make_one_job(app, api_key, binary_model, redis_conn):
    """Eight identical submissions at once: one creates the job (the cache claim and the job's creation are one
    atomic step), the seven others are hits on it, and the queue holds that one job."""
    shared_model(authorize(app.test_client(), api_key), binary_model)
    clients = [authorize(app.test_client(), api_key) for _ in range(8)]
    start = threading.Barrier(len(clients))
    answers: list[tuple[str, str]] = []

    def submit(c) -> None:
        start.wait()
        response = explain(c, binary_model)
        answers.append((response.json["cache"], response.json["id"]))

    threads = [threading.Thread(target=submit, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(cache for cache, _ in answers) == ["hit"] * 7 + ["miss"]
    assert len({job_id for _, job_id in answers}) == 1
    assert redis_conn.lrange("rq:queue:interactive", 0, -1) == [answers[0][1].encode()]


def test_tenant_b_never_gets_tenant_a_result(live_settings, live_client, binary_model):
    """With real workers: both tenants get the same attributions, each from a job of its own, never the other's."""
    from service.app import create_app
    from tests.contract import ValidatingClient

    app = create_app(live_settings)
    app.test_client_class = ValidatingClient
    a = live_client
    b = authorize(app.test_client(), issue_key(live_settings, "tenant-b"))
    shared_model(a, binary_model, name="cache-shared")
    got_a = explain(a, binary_model, name="cache-shared", wait=30)
    assert got_a.status_code == 200 and got_a.headers["X-Cache"] == "miss", got_a.json
    hit = explain(a, binary_model, name="cache-shared", wait=30)
    assert hit.headers["X-Cache"] == "hit" and hit.headers["X-Job-Id"] == got_a.headers["X-Job-Id"]
    got_b = explain(b, binary_model, name="cache-shared", wait=30)
    assert got_b.status_code == 200 and got_b.headers["X-Cache"] == "miss"
    assert got_b.headers["X-Job-Id"] != got_a.headers["X-Job-Id"]
    assert got_b.json["explanations"] == got_a.json["explanations"]  # same seed, same answer, computed apart
    job_b = poll(b, f"/v1/jobs/{got_b.headers['X-Job-Id']}")
    assert job_b["status"] == "succeeded"
    assert b.get(f"/v1/jobs/{got_a.headers['X-Job-Id']}").status_code == 404
    Redis.from_url(live_settings.redis_url).close()


def test_idempotency_key_returns_the_same_job(app, settings, binary_model, redis_conn):
    """A retried submission with the same key returns the first job, even after it was canceled; per tenant."""
    a = authorize(app.test_client(), issue_key(settings, "a"))
    b = authorize(app.test_client(), issue_key(settings, "b"))
    shared_model(a, binary_model)
    first = explain(a, binary_model, **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and first.json["cache"] == "miss"
    a.delete(f"/v1/jobs/{first.json['id']}")
    retried = explain(a, binary_model, **{"Idempotency-Key": "order-42"})
    assert retried.json["id"] == first.json["id"] and retried.json["cache"] == "hit"
    assert retried.json["status"] == "canceled"
    other_tenant = explain(b, binary_model, **{"Idempotency-Key": "order-42"})
    assert other_tenant.json["id"] != first.json["id"] and other_tenant.json["cache"] == "miss"
    changed = a.post(
        "/v1/models/credit:explain",
        json={"instances": binary_model.X[1:2].tolist(), **BODY_KEYS, "wait": 0},
        headers={"Idempotency-Key": "order-42"},
    )
    assert changed.status_code == 422 and changed.json["code"] == "idempotency_key_reused"
    assert changed.json["field"] == "Idempotency-Key"
    bad = explain(a, binary_model, **{"Idempotency-Key": "spaces are not allowed"})
    assert bad.status_code == 422 and bad.json["code"] == "invalid_idempotency_key"

"""Webhooks end to end: refused addresses at submission, signed deliveries by the real workers' couriers, retries
after a 500, redirects never followed, and an outbox that outlives a courier (real Redis, local receivers)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis import Redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.settings import Settings
from engine.webhooks import DEAD, DELIVERY_HEADER, OUTBOX, RECORDS, SIGNATURE_HEADER, Delivery, verify
from service.gateways.webhooks import schedule
from tests.conftest import WEBHOOK_SECRET, upload
from worker.webhooks import Courier


class Receiver:
    """A local HTTP server that records each POST and answers the scripted statuses in turn (then 200)."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.requests) >= count, self.requests
        return self.requests

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for receiver in made:
        receiver.close()


def receiver(made: list[Receiver], script: list[tuple[int, dict[str, str]]] | None = None) -> Receiver:
    made.append(Receiver(script))
    return made[-1]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The worker-less app can send webhooks (a secret), but allowlists nothing."""
    return settings.replace(webhook_secret=WEBHOOK_SECRET)


@pytest.fixture
def live_settings(live_settings: Settings) -> Settings:
    """The live app shares the workers' webhook settings: loopback receivers allowlisted."""
    return live_settings.replace(webhook_allow_networks="127.0.0.0/8")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254"])
def test_non_public_callback_urls_are_refused_at_submission(client, binary_model, redis_conn, address):
    """Explain, variant and audit submissions with such a callback_url are 422 naming it; nothing is queued."""
    assert upload(client, binary_model).status_code == 201
    url = f"http://{address}/hook"
    row = binary_model.X[:1].tolist()
    answers = [
        client.post("/v1/models/credit:explain", json={"instances": row, "wait": 0, "callback_url": url}),
        client.post("/v1/models/credit/variants", json={"kind": "fp16", "callback_url": url}),
        client.post("/v1/audits", json={"model": "credit", "rows": [{"a": 1}], "callback_url": url}),
    ]
    for answer in answers:
        assert answer.status_code == 422, answer.json
        assert (answer.json["code"], answer.json["field"]) == ("callback_url_not_allowed", "callback_url")
    assert redis_conn.zcard(OUTBOX) == 0 and redis_conn.hlen(RECORDS) == 0
    assert not redis_conn.keys("rq:job:*")


def _checked(request: dict[str, Any]) -> dict[str, Any]:
    """The body of a delivery whose signature verifies with the test secret."""
    assert verify(WEBHOOK_SECRET, request["headers"][SIGNATURE_HEADER], request["body"])
    assert request["headers"]["Content-Type"] == "application/json"
    found: dict[str, Any] = json.loads(request["body"])
    return found


def test_a_signed_webhook_is_delivered_and_retried_after_a_500(live_client, binary_model, receivers):
    """The job's end is POSTed signed; the receiver's 500 is retried with the same delivery id and body."""
    hook = receiver(receivers, [(500, {})])
    assert upload(live_client, binary_model, name="hooked").status_code == 201
    body = {"instances": binary_model.X[:1].tolist(), "method": "exact", "wait": 30, "callback_url": hook.url}
    answer = live_client.post("/v1/models/hooked:explain", json=body)
    assert answer.status_code == 200, answer.json
    first, second = hook.wait_for(2)[:2]
    assert first["headers"][DELIVERY_HEADER] == second["headers"][DELIVERY_HEADER]
    assert first["body"] == second["body"] and first["path"] == "/hook"
    posted = _checked(second)
    assert posted["id"] == answer.headers["X-Job-Id"] and posted["status"] == "succeeded"
    assert posted["kind"] == "explain" and posted["result"]["explanations"] == answer.json["explanations"]
    assert posted["location"] == f"/v1/jobs/{posted['id']}"
    time.sleep(0.5)
    assert len(hook.requests) == 2  # delivered once it succeeded, never again
    again = live_client.post("/v1/models/hooked:explain", json=body)  # a cache hit: its job already posts
    assert again.headers["X-Cache"] == "hit"


def test_an_audit_webhook_carries_its_summary(live_client, binary_model, receivers):
    """An audit with a callback_url is POSTed, signed, once merged."""
    hook = receiver(receivers)
    assert upload(live_client, binary_model, name="hooked-audit").status_code == 201
    rows = [dict(zip(binary_model.card["features"], r, strict=True)) for r in binary_model.X[:10].tolist()]
    submitted = live_client.post(
        "/v1/audits", json={"model": "hooked-audit", "rows": rows, "method": "linear", "callback_url": hook.url}
    )
    assert submitted.status_code == 202, submitted.json
    posted = _checked(hook.wait_for(1)[0])
    assert posted["id"] == submitted.json["id"] and posted["kind"] == "audit" and posted["status"] == "succeeded"
    assert posted["summary"]["rows"] == 10


def test_a_redirect_is_not_followed(live_client, live_settings, binary_model, receivers):
    """A 302 answer is final: its target never hears of the job, and the delivery is given up (dead-lettered)."""
    target = receiver(receivers)
    hook = receiver(receivers, [(302, {"Location": target.url})])
    assert upload(live_client, binary_model, name="redirected").status_code == 201
    body = {"instances": binary_model.X[:1].tolist(), "method": "exact", "wait": 30, "callback_url": hook.url}
    assert live_client.post("/v1/models/redirected:explain", json=body).status_code == 200
    hook.wait_for(1)
    connection = Redis.from_url(live_settings.redis_url)
    deadline = time.monotonic() + 30
    dead: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not dead:
        dead = [d for d in map(json.loads, connection.lrange(DEAD, 0, -1)) if d["url"] == hook.url]
        time.sleep(0.05)
    assert dead and dead[0]["given_up"] == "HTTP 302" and dead[0]["attempts"] == 1
    assert target.requests == [] and len(hook.requests) == 1
    connection.close()


def test_the_outbox_outlives_a_courier_that_died_mid_delivery(redis_conn, settings, receivers):
    """A courier claims a delivery and dies; once its lease lapses another courier delivers it, once."""
    hook = receiver(receivers)
    job = Job.create("worker.jobs.explain", args=({},), connection=redis_conn, serializer=JSONSerializer)
    job.save()
    job.set_status(JobStatus.CANCELED)
    allowed = settings.replace(webhook_allow_networks="127.0.0.1/32")
    schedule(redis_conn, Delivery.new("job", job.id, "acme", hook.url))
    dying = Courier(redis_conn, allowed, lease_s=0.5)
    assert len(dying.claim(keys=[OUTBOX], args=[time.time(), time.time() + 0.5, 10])) == 1  # claimed, never sent
    survivor = Courier(Redis.from_url(settings.redis_url or ""), allowed)
    assert survivor.run_once() == 0  # still leased to the dead courier
    deadline = time.monotonic() + 10
    while not hook.requests and time.monotonic() < deadline:
        survivor.run_once()
        time.sleep(0.1)
    posted = _checked(hook.wait_for(1)[0])
    assert posted["id"] == job.id and posted["status"] == "canceled"
    assert survivor.run_once() == 0 and redis_conn.zcard(OUTBOX) == 0 and redis_conn.hlen(RECORDS) == 0
    assert len(hook.requests) == 1


def test_a_courier_refuses_an_address_that_is_no_longer_allowed(redis_conn, settings, receivers):
    """Checked again before sending: without the allowlist, a loopback delivery is given up unsent."""
    hook = receiver(receivers)
    job = Job.create("worker.jobs.explain", args=({},), connection=redis_conn, serializer=JSONSerializer)
    job.save()
    job.set_status(JobStatus.CANCELED)
    schedule(redis_conn, Delivery.new("job", job.id, "acme", hook.url))
    assert Courier(redis_conn, settings).run_once() == 1
    (dead,) = [json.loads(d) for d in redis_conn.lrange(DEAD, 0, -1)]
    assert dead["given_up"].startswith("callback_url_not_allowed") and hook.requests == []

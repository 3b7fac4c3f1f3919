"""The webhook courier: delivers the outbox's records (left by the API) once their job or audit has ended.

The outbox lives in Redis (:mod:`engine.webhooks` names its keys), so it survives any worker: a delivery is
*claimed* by moving its due time one lease ahead, atomically, and only removed once it succeeded or was given up.
A worker that dies mid-delivery leaves it due again when the lease runs out, for any worker to take. Every
worker runs a courier thread beside its jobs; claims keep them from delivering one record twice at once.

Each attempt checks the URL's addresses again and connects to the checked address itself (the ``Host`` header
and TLS name stay the URL's), never follows a redirect, and is signed (``Onnxplain-Signature``). A 5xx, 408,
429 or a network error is retried with exponential backoff up to ``webhook_max_attempts``; other answers and
a policy refusal are final, and the record goes to the dead-letter list.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from engine.audits.store import AuditStore
from engine.errors import InvalidRequest, NotFound
from engine.jobs import JobSerializer, MetaKey, cancel_key, read_job_error
from engine.settings import Settings
from engine.timestamps import format_utc
from engine.webhooks import (
    DEAD,
    DELIVERY_HEADER,
    OUTBOX,
    RECORDS,
    SIGNATURE_HEADER,
    Delivery,
    Target,
    backoff_s,
    check_callback_url,
    parse_networks,
    retryable,
    sign,
)

log = logging.getLogger(__name__)

LEASE_S = 120.0
"""How long a claimed delivery stays invisible to other couriers (longer than one attempt can take)."""
NOT_ENDED_RECHECK_S = 1.0
"""How soon a delivery whose job or audit still runs is looked at again."""
DEAD_KEPT = 1000

# Atomically: the due deliveries (at most ARGV[3]), each moved to ARGV[2] (its lease) before anyone else sees it.
_CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""

_FINAL = {
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}


class Courier:
    """Delivers due webhooks from the outbox.

    Args:
        connection: The Redis connection.
        settings: The webhook settings (secret, allowlist, attempts, backoff, timeout) and the audit store.
        transport: The httpx transport (default: httpx's own).
        lease_s: How long a claimed delivery stays invisible to other couriers.
    """

    def __init__(
        self,
        connection: Redis,
        settings: Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.connection = connection
        self.lease_s = lease_s
        self.settings = settings
        self.allow = parse_networks(settings.webhook_allow_networks)
        self.claim = connection.register_script(_CLAIM)
        # follow_redirects=False: a redirect is an answer, never a second request somewhere else.
        self.http = httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, transport=transport)

    def run_once(self, *, batch: int = 20) -> int:
        """Claim and handle the due deliveries; return how many were handled."""
        now = time.time()
        claimed = self.claim(keys=[OUTBOX], args=[now, now + self.lease_s, batch])
        for raw in claimed:
            delivery_id = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                self.handle(delivery_id)
            except Exception:  # one bad record must not stop the others; its lease brings it back
                log.warning("webhook delivery %s failed unexpectedly", delivery_id, exc_info=True)
        return len(claimed)

    def handle(self, delivery_id: str) -> None:
        """Send one claimed delivery if its resource has ended; reschedule, finish or give it up."""
        raw = self.connection.hget(RECORDS, delivery_id)
        if raw is None:
            self.connection.zrem(OUTBOX, delivery_id)
            return
        delivery = Delivery.from_json(raw)
        try:
            resource = self.resource(delivery)
        except NotFound as exc:
            self._give_up(delivery, str(exc))
            return
        if resource is None:
            self.connection.zadd(OUTBOX, {delivery.id: time.time() + NOT_ENDED_RECHECK_S})
            return
        body = json.dumps(resource, separators=(",", ":")).encode()
        try:
            target = check_callback_url(delivery.url, self.allow)
        except InvalidRequest as exc:
            self._give_up(delivery, f"{exc.code}: {exc}")
            return
        error, again = self.post(target, delivery, body)
        if error is None:
            with self.connection.pipeline() as pipeline:
                pipeline.zrem(OUTBOX, delivery.id)
                pipeline.hdel(RECORDS, delivery.id)
                pipeline.execute()
            log.info("webhook %s for %s %s delivered", delivery.id, delivery.resource, delivery.resource_id)
            return
        tried = Delivery(**{**delivery.__dict__, "attempts": delivery.attempts + 1, "last_error": error})
        if not again or tried.attempts >= self.settings.webhook_max_attempts:
            self._give_up(tried, error)
            return
        wait = backoff_s(
            tried.attempts, base_s=self.settings.webhook_backoff_s, cap_s=self.settings.webhook_max_backoff_s
        )
        with self.connection.pipeline() as pipeline:
            pipeline.hset(RECORDS, tried.id, tried.to_json())
            pipeline.zadd(OUTBOX, {tried.id: time.time() + wait})
            pipeline.execute()
        log.info("webhook %s attempt %d failed (%s); next in %.1f s", tried.id, tried.attempts, error, wait)

    def post(self, target: Target, delivery: Delivery, body: bytes) -> tuple[str | None, bool]:
        """POST the body to the checked address; return (why it failed or ``None``, whether to retry)."""
        parts = urlsplit(target.url)
        literal = f"[{target.address}]" if ":" in target.address else target.address
        url = urlunsplit((parts.scheme, f"{literal}:{target.port}", parts.path or "/", parts.query, ""))
        headers = {
            "Host": parts.netloc.rsplit("@", 1)[-1],
            "Content-Type": "application/json",
            "User-Agent": "onnxplain-webhooks/0.1.0",
            SIGNATURE_HEADER: sign(self.settings.webhook_secret, body),
            DELIVERY_HEADER: delivery.id,
        }
        # TLS is checked against the URL's host name, although the connection goes to the checked address.
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            response = self.http.post(url, content=body, headers=headers, extensions=extensions)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}", True
        if 200 <= response.status_code < 300:
            return None, False
        return f"HTTP {response.status_code}", retryable(response.status_code)

    def resource(self, delivery: Delivery) -> dict[str, Any] | None:
        """The job or audit as posted, or ``None`` while it has not ended.

        Raises:
            NotFound: It no longer exists (expired or deleted).
        """
        if delivery.resource == "audit":
            return self._audit(delivery.resource_id)
        return self._job(delivery.resource_id)

    def _job(self, job_id: str) -> dict[str, Any] | None:
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JobSerializer)
            status = job.get_status()
        except NoSuchJobError:
            raise NotFound(f"job {job_id} expired before its webhook was sent", code="job_not_found") from None
        canceled = bool(self.connection.exists(cancel_key(job_id)))
        public = "canceled" if canceled else _FINAL.get(status) if status is not None else None
        if public is None:
            return None
        meta = job.get_meta()
        body: dict[str, Any] = {
            "id": job.id,
            "kind": meta.get(MetaKey.KIND, "job"),
            "status": public,
            "location": f"/v1/jobs/{job.id}",
            "ended_at": format_utc(job.ended_at) if job.ended_at else None,
        }
        if public == "succeeded":
            body["result"] = job.return_value()
        elif public == "failed":
            result = job.latest_result()
            record = read_job_error(meta.get(MetaKey.ERROR), result.exc_string if result is not None else None)
            body["error"] = {"code": record.code, "detail": record.message, "field": record.field}
        else:
            body["error"] = {"code": "canceled", "detail": "the job was canceled", "field": None}
        return body

    def _audit(self, audit_id: str) -> dict[str, Any] | None:
        audit = AuditStore(self.settings.audit_dir).open(audit_id)
        canceled, state = audit.canceled(), audit.state()
        if canceled is None and state is None:
            return None
        status = "canceled" if canceled is not None else str(state["state"]) if state else "failed"
        body: dict[str, Any] = {"id": audit.id, "kind": "audit", "status": status, "location": f"/v1/audits/{audit.id}"}
        if status == "succeeded":
            body["summary"] = audit.summary()
        elif state is not None and state.get("error"):
            body["error"] = state["error"]
        return body

    def _give_up(self, delivery: Delivery, why: str) -> None:
        record = json.dumps({**json.loads(delivery.to_json()), "given_up": why, "at": time.time()})
        with self.connection.pipeline() as pipeline:
            pipeline.lpush(DEAD, record)
            pipeline.ltrim(DEAD, 0, DEAD_KEPT - 1)
            pipeline.zrem(OUTBOX, delivery.id)
            pipeline.hdel(RECORDS, delivery.id)
            pipeline.execute()
        log.warning("webhook %s for %s %s given up: %s", delivery.id, delivery.resource, delivery.resource_id, why)


def run_courier(courier: Courier, stop: threading.Event, interval: float) -> None:
    """Deliver due webhooks every ``interval`` seconds until ``stop`` is set (a worker's daemon thread)."""
    while not stop.wait(interval):
        try:
            while courier.run_once():
                if stop.is_set():
                    return
        except Exception:  # Redis away: the next interval tries again
            log.warning("the webhook courier could not read the outbox", exc_info=True)

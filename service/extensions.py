"""The per-process objects the routes share, kept in ``app.extensions``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import Flask, current_app
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.errors import Unavailable
from engine.jobs import BATCH, INTERACTIVE
from engine.keys import KeyRing
from engine.models.access import ModelAccess
from engine.models.store import ModelRegistry
from engine.serving import Predictor
from engine.settings import Settings
from service.gateways.jobs import JobGateway
from service.observe import current_request_id

KEY = "onnxplain"
WAIT = "wait"
"""Slots of requests waiting for their job (``settings.max_waiting_requests``)."""
UPLOAD = "upload"
"""Slots of uploads in their trial run (``settings.max_concurrent_uploads``)."""
# redis-py retries a timed-out command 3 times with backoff by default: a stall would hold a request thread for
# four timeouts. The API answers 503 after one; the client retries (Retry-After).
_NO_RETRY = Retry(NoBackoff(), 0)


@dataclass
class Services:
    """What a request handler needs: settings, the store and who owns its models, warm sessions, keys, Redis."""

    settings: Settings
    registry: ModelRegistry
    predictor: Predictor
    access: ModelAccess
    keys: KeyRing
    _redis: Redis | None = None
    _waiting: Redis | None = None
    _probe: Redis | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: dict[str, threading.BoundedSemaphore] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._slots[WAIT] = threading.BoundedSemaphore(max(0, self.settings.max_waiting_requests))
        self._slots[UPLOAD] = threading.BoundedSemaphore(max(0, self.settings.max_concurrent_uploads))

    @contextmanager
    def slot(self, kind: str) -> Iterator[bool]:
        """Take one of this process's ``kind`` slots (:data:`WAIT`, :data:`UPLOAD`) without waiting for it.

        Yields:
            Whether a slot was free; the caller that got none must not hold its thread (it answers at once).
        """
        semaphore = self._slots[kind]
        got = semaphore.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                semaphore.release()

    def redis(self) -> Redis:
        """Return the Redis connection (created on first use).

        Raises:
            Unavailable: ``redis_not_configured`` when no URL is set.
        """
        if self.settings.redis_url is None:
            raise Unavailable("no Redis is configured (set ONNXPLAIN_REDIS_URL)", code="redis_not_configured")
        with self._lock:
            if self._redis is None:
                # Short timeouts: a dead or stalled Redis answers 503 in under 2 s and frees the thread.
                self._redis = Redis.from_url(self.settings.redis_url, retry=_NO_RETRY, **self.settings.redis_options())
            return self._redis

    def waiting_redis(self) -> Redis:
        """Return the connection that blocks on job results: its read timeout outlasts the longest ``wait``."""
        self.redis()  # raises when no Redis is configured
        with self._lock:
            if self._waiting is None:
                assert self.settings.redis_url is not None
                options = self.settings.redis_options(read_timeout_s=self.settings.max_wait_s + 5)
                self._waiting = Redis.from_url(self.settings.redis_url, retry=_NO_RETRY, **options)
            return self._waiting

    def probe_redis(self) -> Redis:
        """Return the connection of ``/readyz`` and ``/metrics``: timeouts of ``metrics_redis_timeout_s``, so a
        stalled Redis costs a probe or a scrape a fraction of a second per round trip."""
        self.redis()  # raises when no Redis is configured
        with self._lock:
            if self._probe is None:
                assert self.settings.redis_url is not None
                t = self.settings.metrics_redis_timeout_s
                options = {**self.settings.redis_options(read_timeout_s=t), "socket_connect_timeout": t}
                self._probe = Redis.from_url(self.settings.redis_url, retry=_NO_RETRY, **options)
            return self._probe

    def jobs(self) -> JobGateway:
        """Return the job gateway over this process's Redis connections (jobs it enqueues carry the request id)."""
        s = self.settings
        return JobGateway(
            self.redis(),
            result_ttl=s.result_ttl_s,
            failure_ttl=s.failure_ttl_s,
            waiting=self.waiting_redis(),
            caps={INTERACTIVE: s.interactive_queue_cap, BATCH: s.batch_queue_cap},
            # A job that started just before its queued TTL keeps its whole run time; results then get result_ttl.
            queued_ttl={INTERACTIVE: s.interactive_queued_ttl_s + s.job_timeout_s},
            retry_after_s=s.queue_full_retry_after_s,
            request_id=current_request_id(),
        )


def init_app(app: Flask, settings: Settings) -> Services:
    """Create the services for ``app`` and store them in ``app.extensions``."""
    registry = ModelRegistry(settings)
    services = Services(
        settings=settings,
        registry=registry,
        predictor=Predictor(settings, registry),
        access=ModelAccess(registry.root),
        keys=KeyRing(settings),
    )
    app.extensions[KEY] = services
    return services


def services() -> Services:
    """Return the current app's services."""
    found: Services = current_app.extensions[KEY]
    return found

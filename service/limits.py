"""Per-key rate limits (the ``limits`` library's fixed window, counted in Redis so every API process shares them).

One limit (``ONNXPLAIN_RATE_LIMIT``, e.g. ``600/minute``) applies to each API key across all routes; health
and docs routes are exempt. Past it: 429 ``too_many_requests`` with ``Retry-After`` and the ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` headers (the IETF draft's names; ``Reset`` in seconds), which
every limited response carries.

When Redis cannot be reached or stalls, the limiter **fails open to per-process counting**: after one command
past ``rate_limit_timeout_s`` it counts each key in the API process's memory (the same limit, per process) and
tries Redis again at growing intervals (1, 2, 4, ... 32 s). A 503 for every request would stop predictions,
which need no Redis; no limit at all would let one key flood the API while Redis is away.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, g, request
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string
from limits.util import WindowStats
from redis.backoff import NoBackoff
from redis.retry import Retry
from werkzeug.exceptions import TooManyRequests

from engine.settings import Settings
from service.auth import PUBLIC, RULES

log = logging.getLogger("onnxplain.limits")


_ONE_TRIP = "onnxplain+"
_HIT = b"""
local current = redis.call("incrby", KEYS[1], ARGV[2])
if tonumber(current) == tonumber(ARGV[2]) then
    redis.call("expire", KEYS[1], ARGV[1])
end
return {current, redis.call("pttl", KEYS[1])}
"""


LEASE_SHARE = 64
"""A lease reserves at most this fraction (1/64) of what is left of a window: denial early by ≤ processes/64 of it."""

MAX_LEASE = 32
"""Hits one lease reserves at most: one Redis round trip per this many requests of a busy key, per process."""


MAX_KEYS = 4096
"""Storage keys (an API key's under each limit) a process keeps made; past it they are made again."""


@dataclass
class _Lease:
    """Slots ``next … last`` of one key's window that this process reserved in Redis, valid until ``ends``."""

    next: int
    last: int
    ends: float


class OneTripRedisStorage(RedisStorage):
    """limits' Redis storage that reserves hits in leases and answers the window from its own hit.

    limits' strategy counts a hit (``incr``), then reads the window back for the ``RateLimit-*`` headers
    (``get``, ``get_expiry``): three round trips, 40 % of a one-row ``:predict`` in process (``bench/README.md``). Here
    the hit's script returns the count and the key's time to live with it, and the two reads that follow on
    the same thread for the same key are answered from that, then forgotten. The headers describe the window
    as this request left it, which is what they mean; any other read goes to Redis as before.

    **Leases.** A busy key would still cost a round trip per request (half of a one-row ``:predict``'s time
    under gunicorn). So a hit reserves ``n`` slots at once (``INCRBY n``): ``n`` is what is left of the limit
    over :data:`LEASE_SHARE`, at most :data:`MAX_LEASE`, and 1 near the limit or when the limit cannot be
    read from the key. The process's threads then take the slots one by one without Redis until they run out
    or the window ends; then one thread reserves the next lease while the others wait for it. Every admitted
    request holds a slot of the window that Redis counted, so the limit is never exceeded; slots reserved and
    not used only make a key's last requests of a window meet the limit a little early (at most
    ``processes × remaining / 64``).
    """

    STORAGE_SCHEME = [f"{_ONE_TRIP}redis", f"{_ONE_TRIP}rediss"]

    def __init__(self, uri: str, **options: Any) -> None:
        super().__init__(uri.removeprefix(_ONE_TRIP), **options)
        self._last = threading.local()  # (key, count, expires at) of this thread's latest hit
        self._lua_hit = self.get_connection().register_script(_HIT)
        self._leases: dict[str, _Lease] = {}
        self._refills: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        timeout = options.get("socket_timeout")
        self._timeout_s = float(timeout) if isinstance(timeout, int | float) else 1.0

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count ``amount`` hits on ``key`` (its window ``expiry`` seconds from the first) and remember the window."""
        if amount != 1:
            return self._reserve(key, expiry, amount)
        count = self._take(key)
        if count is not None:
            return count
        # One thread a key refills the lease; the others wait for it and take from the new one. Without this,
        # every thread that found the lease spent went to Redis at once and each new lease replaced the last:
        # under 8 threads a round trip per 14 requests instead of 32, and the dropped leases' slots counted
        # against the key (measured: Redis counted 2.2 hits per request). A waiter gives up after the
        # storage's own timeout and goes to Redis itself, so a stalled Redis holds nobody longer than it did.
        with self._lock:
            gate = self._refills.setdefault(key, threading.Lock())
        waited = gate.acquire(timeout=self._timeout_s)
        try:
            count = self._take(key) if waited else None
            return count if count is not None else self._reserve(key, expiry, 1)
        finally:
            if waited:
                gate.release()

    def _take(self, key: str) -> int | None:
        """The next slot of this process's lease on ``key``, or ``None`` when it has none left or its window ended."""
        now = time.time()
        with self._lock:
            lease = self._leases.get(key)
            if lease is not None and lease.next <= lease.last and now < lease.ends:
                count, lease.next = lease.next, lease.next + 1
                self._last.hit = (key, count, lease.ends)
                return count
        return None

    def _reserve(self, key: str, expiry: int, amount: int) -> int:
        """Count ``amount`` hits in Redis (for one hit, a lease's worth) and return this request's count."""
        size = self._lease_size(key, self._leases.get(key)) if amount == 1 else amount
        total, ttl_ms = self._lua_hit([self.prefixed_key(key)], [expiry, size])
        total, ends = int(total), time.time() + max(int(ttl_ms), 0) / 1000
        count = total - size + amount
        if amount == 1:
            with self._lock:
                self._leases[key] = _Lease(count + 1, total, ends)
        self._last.hit = (key, count, ends)
        return count

    @staticmethod
    def _lease_size(key: str, lease: _Lease | None) -> int:
        # limits' keys end in ".../{amount}/{multiples}/{granularity}"; a key of another shape gets no lease.
        try:
            limit = int(key.rsplit("/", 3)[1])
        except (IndexError, ValueError):
            return 1
        known = lease.last if lease is not None and time.time() < lease.ends else 0
        return max(1, min(MAX_LEASE, (limit - known) // LEASE_SHARE))

    def get(self, key: str) -> int:
        """The count of ``key``: this thread's latest hit's, when it was on ``key``, else Redis's."""
        hit = getattr(self._last, "hit", None)
        return hit[1] if hit is not None and hit[0] == key else super().get(key)

    def get_expiry(self, key: str) -> float:
        """When ``key``'s window ends (Unix time), from the latest hit as :meth:`get`; the hit is then forgotten."""
        hit = getattr(self._last, "hit", None)
        if hit is not None and hit[0] == key:
            self._last.hit = None
            return float(hit[2])
        return super().get_expiry(key)

    def clear(self, key: str) -> None:
        """Reset ``key``'s window in Redis and drop this process's lease on it."""
        with self._lock:
            self._leases.pop(key, None)
        super().clear(key)


def _storage_uri(settings: Settings) -> str:
    url = settings.redis_url
    if not url:
        return "memory://"
    return _ONE_TRIP + url if url.startswith(("redis://", "rediss://")) else url


def _key() -> str:
    # Runs after the auth check: every limited request has a principal. The key id is public (never the key).
    principal = getattr(g, "principal", None)
    return f"key:{principal.key_id}" if principal is not None else f"addr:{request.remote_addr}"


def _exempt() -> bool:
    return request.endpoint is None or RULES.get(request.endpoint) == PUBLIC


def _storage_options(settings: Settings) -> dict[str, Any]:
    """Options of the limiter's Redis client: the service's, with the limiter's own short timeouts, no retry."""
    timeout = settings.rate_limit_timeout_s
    # Any: they all go to redis.from_url (floats, a Retry).
    options: dict[str, Any] = settings.redis_options(read_timeout_s=timeout)
    # redis-py retries a timed-out command 3 times by default: four timeouts before the fallback takes over.
    options.update(socket_connect_timeout=min(timeout, settings.redis_connect_timeout_s), retry=Retry(NoBackoff(), 0))
    return options


class KeyLimiter:
    """The per-key limit of every request: limits' fixed window over :class:`OneTripRedisStorage`, failing open.

    limits is the library flask-limiter is built on; flask-limiter's own per-request work (resolving each
    route's decorated, blueprint and application limits, exemption scopes, meta limits, header selection) cost
    about 200 µs of a one-row ``:predict``'s 900 µs in process, for a service with one set of limits on every
    route but the public ones (HTTP section of ``bench/README.md``). This does that one thing.

    On a storage error it counts in this process's memory (the same limits, per process) and pings Redis again
    after 1, 2, 4, … 32 s, as flask-limiter's ``in_memory_fallback`` did.
    """

    def __init__(self, settings: Settings) -> None:
        self.items = sorted(parse_many(settings.rate_limit))
        storage = storage_from_string(
            _storage_uri(settings), key_prefix="onnxplain:ratelimit", **_storage_options(settings)
        )
        if not isinstance(storage, Storage):  # an async:// scheme: limits' asyncio storages serve no WSGI app
            raise ValueError(f"the rate limit storage {type(storage).__name__} is not a synchronous one")
        self.storage: Storage = storage
        self.local: Storage = MemoryStorage()  # the fallback while Redis is away
        self._keys: dict[tuple[str, int], str] = {}
        self._lock = threading.Lock()
        self._down = False
        self._checks = 0
        self._next_check = 0.0

    def hit(self, key: str) -> tuple[bool, RateLimitItem, WindowStats]:
        """Count one request of ``key`` under every limit; return whether all admit it, and the limit to report.

        The reported limit is the first one that refuses the request, else the one with the fewest requests left.
        """
        storage = self._storage()
        try:
            return self._hit(storage, key)
        except Exception as err:  # any storage failure: a limiter must never turn requests into 500s or waits
            if storage is self.local:
                raise
            log.warning("rate limit storage unreachable (%s); counting in this process until it answers", err)
            with self._lock:
                self._down, self._checks, self._next_check = True, 0, time.monotonic() + 1
            return self._hit(self.local, key)

    def _hit(self, storage: Storage, key: str) -> tuple[bool, RateLimitItem, WindowStats]:
        # limits' fixed-window strategy (hit, then get_window_stats) on the storage directly: the strategy built
        # the storage key three times (25 µs of a one-row :predict). The remaining count is the hit's own, which
        # the strategy's read-back returned too (OneTripRedisStorage answers it from the hit).
        report: tuple[RateLimitItem, WindowStats] | None = None
        for index, item in enumerate(self.items):
            stored = self._storage_key(index, item, key)
            count = storage.incr(stored, item.get_expiry())
            stats = WindowStats(storage.get_expiry(stored), max(0, item.amount - count))
            if count > item.amount:
                return False, item, stats
            if report is None or stats.remaining < report[1].remaining:
                report = (item, stats)
        assert report is not None  # parse_many never returns no limits
        return True, *report

    def _storage_key(self, index: int, item: RateLimitItem, key: str) -> str:
        stored = self._keys.get((key, index))
        if stored is None:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            stored = self._keys[(key, index)] = item.key_for(key)
        return stored

    def _storage(self) -> Storage:
        if not self._down:
            return self.storage
        with self._lock:
            if not self._down:
                return self.storage
            if time.monotonic() < self._next_check:
                return self.local
            self._checks += 1
            self._next_check = time.monotonic() + min(2**self._checks, 32)
        if self.storage.check():
            log.info("rate limit storage answers again")
            with self._lock:
                self._down = False
            return self.storage
        return self.local


def init_limits(app: Flask, settings: Settings) -> KeyLimiter | None:
    """Install the per-key limit on ``app`` (after the auth check); ``None`` when ``rate_limit`` is empty.

    Raises:
        ValueError: ``rate_limit`` is not in limits' notation (``600/minute``, ``10/second;600/minute``).
    """
    if not settings.rate_limit:
        return None
    limiter = KeyLimiter(settings)

    @app.before_request
    def _check_limit() -> None:
        if _exempt():
            return
        admitted, item, stats = limiter.hit(_key())
        g.rate_limit = (item, stats)
        if not admitted:
            raise TooManyRequests(f"rate limit exceeded: {item} for this API key")

    @app.after_request
    def _limit_headers(response: Response) -> Response:
        limit = g.get("rate_limit")
        if limit is None:
            return response
        item, stats = limit
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        response.headers["RateLimit-Limit"] = str(item.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, stats.remaining))
        response.headers["RateLimit-Reset"] = str(reset)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, reset))
        return response

    return limiter

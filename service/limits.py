"""Per-key rate limits (flask-limiter, counted in Redis so every API process shares them).

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

import time
from typing import Any

from flask import Flask, Response, g, request
from flask_limiter import HeaderNames, Limiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.settings import Settings
from service.auth import PUBLIC, RULES

_RESET = "RateLimit-Reset"
_RETRY_AFTER = "X-Onnxplain-Limit-Retry-After"  # the limiter's value, kept apart so a 503's own Retry-After stays


def _key() -> str:
    # Runs after the auth check: every limited request has a principal. The key id is public (never the key).
    principal = getattr(g, "principal", None)
    return f"key:{principal.key_id}" if principal is not None else f"addr:{request.remote_addr}"


def _exempt() -> bool:
    return request.endpoint is None or RULES.get(request.endpoint) == PUBLIC


def _storage_options(settings: Settings) -> dict[str, Any]:
    """Options of the limiter's Redis client: the service's, with the limiter's own short timeouts, no retry."""
    timeout = settings.rate_limit_timeout_s
    # Any: flask-limiter types these as str | int, yet hands them all to redis.from_url (floats, a Retry).
    options: dict[str, Any] = settings.redis_options(read_timeout_s=timeout)
    # redis-py retries a timed-out command 3 times by default: four timeouts before the fallback takes over.
    options.update(socket_connect_timeout=min(timeout, settings.redis_connect_timeout_s), retry=Retry(NoBackoff(), 0))
    return options


def init_limits(app: Flask, settings: Settings) -> Limiter | None:
    """Install the per-key limit on ``app`` (after the auth check); ``None`` when ``rate_limit`` is empty."""
    if not settings.rate_limit:
        return None

    # Registered before the limiter's own hook, so it runs after it (Flask runs after_request in reverse).
    @app.after_request
    def _reset_as_seconds(response: Response) -> Response:
        # flask-limiter writes the window's end as a Unix time; the draft standard wants seconds from now.
        reset = response.headers.get(_RESET)
        if reset is not None and reset.isdigit():
            response.headers[_RESET] = str(max(0, int(reset) - int(time.time())))
        # flask-limiter sends Retry-After on every response; it means something only on its own 429.
        limiter_retry = response.headers.pop(_RETRY_AFTER, None)
        if response.status_code == 429 and limiter_retry is not None:
            response.headers["Retry-After"] = limiter_retry
        return response

    return Limiter(
        _key,
        app=app,
        application_limits=[settings.rate_limit],
        storage_uri=settings.redis_url or "memory://",
        storage_options=_storage_options(settings),
        strategy="fixed-window",
        key_prefix="onnxplain:ratelimit",
        headers_enabled=True,
        header_name_mapping={
            HeaderNames.LIMIT: "RateLimit-Limit",
            HeaderNames.REMAINING: "RateLimit-Remaining",
            HeaderNames.RESET: _RESET,
            HeaderNames.RETRY_AFTER: _RETRY_AFTER,
        },
        application_limits_exempt_when=_exempt,
        # A Redis outage must not turn every request into a 500 or a wait: count in memory until Redis is back;
        # the routes that need Redis answer 503 themselves.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
    )

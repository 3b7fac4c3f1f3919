"""Per-request observability: the request id, one JSON log line per request, and the API's Prometheus metrics.

The metrics are prometheus-client objects. Under gunicorn, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR``
before any worker imports this module, so each API process writes its samples to files there and ``/metrics``
sums every process's files (see ``service/routes/metrics.py``); without it (tests, ``flask run``) they live in the
process. What the workers measure reaches ``/metrics`` through Redis instead (:mod:`engine.telemetry`).

The hooks cost a dictionary lookup, a ``perf_counter`` and two sample updates per request: no I/O, no lock held
across a request.
"""

from __future__ import annotations

import logging
import re
from time import perf_counter

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import Counter, Histogram

from engine.logs import REQUEST_ID, new_request_id, valid_request_id
from engine.telemetry import TIME_BUCKETS, Metric, set_sink

REQUEST_HEADER = "X-Request-ID"

access_log = logging.getLogger("onnxplain.request")

HTTP_REQUESTS = Counter(
    "onnxplain_http_requests_total",
    "HTTP requests answered, by route template, method and status.",
    ("route", "method", "status"),
)
HTTP_LATENCY = Histogram(
    "onnxplain_http_request_duration_seconds",
    "Time to answer HTTP requests, by route template and method.",
    ("route", "method"),
    buckets=TIME_BUCKETS,
)
VARIANTS_REQUESTED = Counter(
    "onnxplain_variants_requested_total",
    "Variant builds accepted (new jobs and cache hits), by variant kind.",
    ("kind",),
)
AUDITS_SUBMITTED = Counter("onnxplain_audits_submitted_total", "Audits accepted and queued.")

# The engine's metrics as measured in the API processes (predictions): role="api". The workers' arrive from Redis
# under the same names with role="worker"; /metrics merges them into one family each.
_ENGINE: dict[str, Counter | Histogram] = {
    "model_load_seconds": Histogram(
        "onnxplain_model_load_seconds",
        "Time to load an ONNX model into an onnxruntime session.",
        ("role",),
        buckets=TIME_BUCKETS,
    ),
    "session_cache": Counter(
        "onnxplain_session_cache", "Session-cache lookups by result (hit or miss).", ("role", "result")
    ),
}


_ENGINE_SERIES: dict[tuple[str, tuple[str, ...]], Counter | Histogram] = {}


def _engine_sink(metric: Metric, labels: tuple[str, ...], value: float) -> None:
    # Every :predict counts a session-cache hit: its series is labelled once and kept, as _series does (labels()
    # takes the family's lock and builds its key, 5-15 µs a call). The engine's labels are a few fixed values.
    series = _ENGINE_SERIES.get((metric.name, labels))
    if series is None:
        target = _ENGINE.get(metric.name)
        if target is None:
            return
        series = _ENGINE_SERIES[(metric.name, labels)] = target.labels("api", *labels)
    if isinstance(series, Histogram):
        series.observe(value)
    else:
        series.inc(value)


_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_TEMPLATES: dict[str, str] = {}


def route_template(rule: str) -> str:
    """Return a URL rule in the contract's spelling: ``/v1/models/<model_name:name>`` → ``/v1/models/{name}``."""
    found = _TEMPLATES.get(rule)
    if found is None:
        found = _TEMPLATES[rule] = _ARGUMENT.sub(r"{\1}", rule)  # a few dozen rules: cached for good
    return found


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SERIES: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _series(route: str, method: str, status: int) -> tuple[Counter, Histogram]:
    """Return the request count and latency series of one route, method and status (labelled once, then kept).

    ``labels()`` takes the family's lock and builds its key on every call. The keys are bounded: route templates
    (not paths), the standard methods (any other token a client sends, on an unmatched path say, counts as
    ``OTHER``: each would have been a series of its own) and the statuses the app sends.
    """
    if method not in _METHODS:
        method = "OTHER"
    found = _SERIES.get((route, method, status))
    if found is None:
        found = _SERIES[(route, method, status)] = (
            HTTP_REQUESTS.labels(route, method, str(status)),
            HTTP_LATENCY.labels(route, method),
        )
    return found


def current_request_id() -> str | None:
    """Return the current request's id (``None`` outside a request)."""
    return getattr(g, "request_id", None) if has_request_context() else None


def init_observe(app: Flask) -> None:
    """Install the request id, the request log line and the request metrics on ``app`` (first and last hooks)."""
    set_sink(_engine_sink)

    # before_request hooks run in the order registered: this one is registered before auth and limits, so a
    # refused request has an id and a log line too.
    @app.before_request
    def _start() -> None:
        g.request_started = perf_counter()
        # An id that is missing, too long or has odd characters is replaced, never echoed: logs stay safe.
        g.request_id = valid_request_id(request.headers.get(REQUEST_HEADER)) or new_request_id()
        g.request_id_token = REQUEST_ID.set(g.request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        request_id = current_request_id() or new_request_id()  # a request refused before _start (e.g. 413)
        response.headers[REQUEST_HEADER] = request_id
        started = getattr(g, "request_started", None)
        elapsed = perf_counter() - started if started is not None else 0.0
        # The rule's template, never the raw path: model names and job ids would make a series each.
        route = route_template(request.url_rule.rule) if request.url_rule is not None else "unmatched"
        count, latency = _series(route, request.method, response.status_code)
        count.inc()
        latency.observe(elapsed)
        access_log.info(
            "%s %s %s",
            request.method,
            route,
            response.status_code,
            extra={
                "fields": {
                    "method": request.method,
                    "path": request.path,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 3),
                    "remote_addr": request.remote_addr,
                    "tenant": getattr(getattr(g, "principal", None), "tenant", None),
                },
                "request_id": request_id,
            },
        )
        return response

    @app.teardown_request
    def _forget(exc: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            REQUEST_ID.reset(token)

"""Liveness and readiness (``/livez``, ``/readyz``)."""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify
from redis.exceptions import RedisError

from engine.errors import Unavailable
from service.errors import scrub
from service.extensions import services
from service.gateways.queues import QueueState, queue_states

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez() -> Response:
    """Answer 200 while the process serves requests; touches nothing (no Redis, no disk)."""
    return jsonify({"status": "ok"})


def _worker_check(state: QueueState) -> str:
    return f"ok ({state.live_workers} live)" if state.live_workers else "no live worker"


def readiness() -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Check Redis, the model and audit stores, and live workers per queue.

    Returns:
        Each check's state (``ok``, ``ok (<n> live)`` for a queue's workers, else what is wrong), and each queue's
        depth, oldest job's age and live workers (empty when Redis did not answer).
    """
    svc = services()
    checks: dict[str, str] = {}
    queues: dict[str, dict[str, float]] = {}
    try:
        # The probe connection's short timeouts bound the answer while Redis stalls: three round trips of 0.5 s.
        connection = svc.probe_redis()
        connection.ping()
        checks["redis"] = "ok"
        states = queue_states(connection, worker_ttl_s=svc.settings.worker_ttl_s)
    except (RedisError, Unavailable, OSError) as exc:
        checks["redis"] = scrub(f"unavailable: {exc}")
        states = []
    for state in states:
        queues[state.name] = {
            "depth": state.depth,
            "oldest_age_s": round(state.oldest_age_s, 3),
            "live_workers": state.live_workers,
        }
        if svc.settings.ready_requires_workers:
            checks[f"workers:{state.name}"] = _worker_check(state)
    for name, root in (("model_store", svc.registry.root), ("audit_store", svc.settings.audit_dir)):
        if name == "audit_store" and not root.exists():
            checks[name] = "ok"  # created with the first audit
            continue
        checks[name] = "ok" if root.is_dir() and os.access(root, os.R_OK | os.W_OK) else "unreadable"
    return checks, queues


def _ok(value: str) -> bool:
    return value == "ok" or value.startswith("ok (")


@bp.get("/readyz")
def readyz() -> tuple[Response, int, dict[str, str]]:
    """Answer 200 when Redis, the stores and a live worker per queue are there, else 503 naming what is not.

    The body is ``{"status", "checks", "queues"}``; ``Retry-After`` comes with a 503.
    """
    checks, queues = readiness()
    ready = all(_ok(v) for v in checks.values())
    body = jsonify({"status": "ok" if ready else "unavailable", "checks": checks, "queues": queues})
    return body, 200 if ready else 503, {} if ready else {"Retry-After": "5"}

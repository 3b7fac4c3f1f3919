"""Liveness and readiness (``/livez``, ``/readyz``)."""

from __future__ import annotations

import os

from flask import Blueprint, Response, jsonify
from redis.exceptions import RedisError

from engine.errors import Unavailable
from service.errors import scrub
from service.extensions import services

bp = Blueprint("health", __name__)


@bp.get("/livez")
def livez() -> Response:
    """Answer 200 while the process serves requests; touches nothing (no Redis, no disk)."""
    return jsonify({"status": "ok"})


def readiness() -> dict[str, str]:
    """Check Redis and the model store; return each check's state."""
    svc = services()
    checks: dict[str, str] = {}
    try:
        svc.redis().ping()
        checks["redis"] = "ok"
    except (RedisError, Unavailable, OSError) as exc:
        checks["redis"] = scrub(f"unavailable: {exc}")
    root = svc.registry.root
    checks["model_store"] = "ok" if root.is_dir() and os.access(root, os.R_OK | os.W_OK) else "unreadable"
    return checks


@bp.get("/readyz")
def readyz() -> tuple[Response, int, dict[str, str]]:
    """Answer 200 when Redis and the model store are usable, else 503 (with ``Retry-After``) and the failing checks.

    Redis is pinged over the command connection, whose read timeout (``ONNXPLAIN_REDIS_TIMEOUT_S``) bounds the
    answer during a stall.
    """
    checks = readiness()
    ready = all(v == "ok" for v in checks.values())
    body = jsonify({"status": "ok" if ready else "unavailable", "checks": checks})
    return body, 200 if ready else 503, {} if ready else {"Retry-After": "5"}

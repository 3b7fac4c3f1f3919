"""Map the engine's exception tree (and Flask's own errors) to HTTP.

``/v1`` routes answer RFC 9457 ``application/problem+json`` with a stable
``code``; ``/v2`` routes answer the Open Inference Protocol's
``{"error": "..."}``, which tritonclient decodes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from engine import errors as engine_errors
from engine.errors import (
    Conflict,
    ExplanationFailed,
    Forbidden,
    InvalidRequest,
    JobCanceled,
    JobRefused,
    ModelRejected,
    NotFound,
    OnnxplainError,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from engine.jobs import CANCELED, TIMEOUT, JobError

log = logging.getLogger(__name__)

# NOTE: to add an error class:
#   1. subclass it in engine/errors.py with a default ``code``;
#   2. add it here, most specific first;
#   3. list its codes in openapi.yaml's Problem schema description.
# Job errors carry the class name (engine/jobs.py), so a job answers what a direct call would.
_STATUS: list[tuple[type[OnnxplainError], int]] = [
    (Unauthorized, 401),
    (Forbidden, 403),
    (InvalidRequest, 422),
    (ModelRejected, 422),
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (Unavailable, 503),
    (JobCanceled, 409),
    (JobRefused, 500),
    (ExplanationFailed, 422),
]

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


# Job codes that are no engine error: the failure is on the server's side, or the job's limit or state.
_JOB_STATUS = {TIMEOUT: 504, CANCELED: 409}


def status_of(exc: OnnxplainError) -> int:
    """Return the HTTP status for an engine error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def status_for(record: JobError) -> int:
    """Return the HTTP status of a stored job error: the status the same error answers on a direct call.

    An engine error is known by its class name; ``timeout`` is 504, ``canceled`` 409, and every other code
    (``internal_error``, ``worker_lost``, ``chunk_lost``, ``audit_lost``, ``job_refused``) 500.
    """
    cls = getattr(engine_errors, record.error_class or "", None)
    if isinstance(cls, type) and issubclass(cls, OnnxplainError):
        return status_of(cls(""))
    return _JOB_STATUS.get(record.code, 500)


# What a problem must never show a client: where the server keeps files (upload temp dirs, onnxruntime's source
# tree in its messages) and where its Redis or other services listen.
_SECRETS = [
    (re.compile(r"\b(?:rediss?|unix|https?|tcp)://\S+"), "<address>"),
    # A colon may come first: onnxruntime writes "failed:/onnxruntime_src/...". URLs ("://") are gone by then.
    (re.compile(r"(?<![\w./])(?!/v[12]/)(?:/[\w.@+~-]+){2,}/?"), "<path>"),
    (re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"), "<address>"),
    (re.compile(r"\[[0-9A-Fa-f:]*:[0-9A-Fa-f:]*\](?::\d{1,5})?"), "<address>"),
    (re.compile(r"\b(?:localhost|[A-Za-z][\w-]*(?:\.[\w-]+)+|[A-Za-z][\w-]*):\d{2,5}\b"), "<address>"),
]


def scrub(text: str) -> str:
    """Remove server paths and network addresses from text meant for a client."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> dict[str, Any]:
    """Build a problem body (RFC 9457) with a stable ``code``: the one builder, for responses and job views.

    The detail is scrubbed of server paths and addresses (:func:`scrub`), whatever raised it.
    """
    body: dict[str, Any] = {
        "type": f"https://onnxplain.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": scrub(detail),
        "code": code,
    }
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem_of(error: OnnxplainError | JobError, **extra: Any) -> dict[str, Any]:
    """The problem body of an engine error or of a stored job error, with its one status."""
    if isinstance(error, JobError):
        return problem(status_for(error), error.code, error.title, error.message, field=error.field, **extra)
    return problem(status_of(error), error.code, error.title, error.detail, field=error.field, **extra)


def respond(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """Turn a problem body into a response: problem+json on ``/v1``, ``{"error"}`` on ``/v2``."""
    if request.path.startswith("/v2/"):
        response = jsonify({"error": body["detail"]})
    else:
        response = jsonify(body)
        response.mimetype = "application/problem+json"
    response.status_code = int(body["status"])
    response.headers.update(headers or {})
    return response


def _challenge(exc: OnnxplainError) -> str:
    """The ``WWW-Authenticate`` value of a 401 or 403 (RFC 6750)."""
    if isinstance(exc, Forbidden):
        return f'Bearer realm="onnxplain", error="insufficient_scope", scope="{exc.scope or ""}"'
    if exc.code == "invalid_key":
        return 'Bearer realm="onnxplain", error="invalid_token"'
    return 'Bearer realm="onnxplain"'


def _engine_error(exc: OnnxplainError) -> Response:
    body = problem_of(exc)
    headers = {"Retry-After": str(getattr(exc, "retry_after_s", 5))} if body["status"] == 503 else {}
    if body["status"] in (401, 403):
        headers["WWW-Authenticate"] = _challenge(exc)
    return respond(body, headers)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    detail = exc.description or exc.name
    if status == 413:
        detail = "the request body is larger than the configured limit"
    response = respond(problem(status, code, exc.name, detail))
    if status == 405 and exc.get_response().headers.get("Allow"):
        response.headers["Allow"] = exc.get_response().headers["Allow"]
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return respond(
        problem(500, "internal_error", "Internal server error", "an unexpected error occurred; it has been logged")
    )


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that turn every error into problem+json (or V2 JSON)."""
    app.register_error_handler(OnnxplainError, _engine_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)

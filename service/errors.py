"""Map the engine's exception tree (and Flask's own errors) to HTTP.

``/v1`` routes answer RFC 9457 ``application/problem+json`` with a stable
``code``; ``/v2`` routes answer the Open Inference Protocol's
``{"error": "..."}``, which tritonclient decodes.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from engine import errors as engine_errors
from engine.errors import (
    Conflict,
    ExplanationFailed,
    InvalidRequest,
    JobCanceled,
    ModelRejected,
    NotFound,
    OnnxplainError,
    PayloadTooLarge,
    Unavailable,
)

log = logging.getLogger(__name__)

# NOTE: to add an error class:
#   1. subclass it in engine/errors.py with a default ``code``;
#   2. add it here, most specific first;
#   3. list its codes in openapi.yaml's Problem schema description.
_STATUS: list[tuple[type[OnnxplainError], int]] = [
    (InvalidRequest, 422),
    (ModelRejected, 422),
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (Unavailable, 503),
    (JobCanceled, 409),
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


def status_of(exc: OnnxplainError) -> int:
    """Return the HTTP status for an engine error."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def status_of_stored(error: dict[str, Any]) -> int:
    """Return the HTTP status of an error a worker stored as ``{code, error_class, ...}``."""
    cls = getattr(engine_errors, str(error.get("error_class", "")), None)
    if isinstance(cls, type) and issubclass(cls, OnnxplainError):
        return status_of(cls(""))
    return 504 if error.get("code") == "timeout" else 500


def problem(status: int, code: str, title: str, detail: str, **extra: Any) -> Response:
    """Build a problem+json response (RFC 9457) with a stable ``code``."""
    body = {"type": f"https://onnxplain.dev/problems/{code}", "title": title, "status": status, "detail": detail}
    body["code"] = code
    body.update({k: v for k, v in extra.items() if v is not None})
    if request.path.startswith("/v2/"):
        response = jsonify({"error": detail})
    else:
        response = jsonify(body)
        response.mimetype = "application/problem+json"
    response.status_code = status
    return response


def _engine_error(exc: OnnxplainError) -> Response:
    status = status_of(exc)
    response = problem(status, exc.code, exc.title, exc.detail, field=exc.field)
    if status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    detail = exc.description or exc.name
    if status == 413:
        detail = "the request body is larger than the configured limit"
    response = problem(status, code, exc.name, detail)
    if status == 405 and exc.get_response().headers.get("Allow"):
        response.headers["Allow"] = exc.get_response().headers["Allow"]
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return problem(500, "internal_error", "Internal server error", "an unexpected error occurred; it has been logged")


def register_error_handlers(app: Flask) -> None:
    """Install the handlers that turn every error into problem+json (or V2 JSON)."""
    app.register_error_handler(OnnxplainError, _engine_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)

"""The exceptions of the SDK: one class per kind of refusal, each carrying the problem's fields."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer of the API: its ``application/problem+json`` (or a V2 ``{"error": ...}``).

    Attributes:
        status: The HTTP status (for a failed job or audit: the status the same failure answers directly).
        code: The problem's stable ``code`` (``error`` when the body had none).
        field: The input at fault, when the problem names one.
        detail: The human-readable explanation.
        body: The whole problem body.
        retry_after: Seconds the server asked to wait (``Retry-After``), when it said.
    """

    def __init__(self, status: int, body: dict[str, Any], *, retry_after: float | None = None) -> None:
        self.status = status
        self.body = body
        self.code = str(body.get("code", "error"))
        self.detail = str(body.get("detail") or body.get("error") or body)
        field = body.get("field")
        self.field: str | None = str(field) if field is not None else None
        self.retry_after = retry_after
        where = f" [{self.field}]" if self.field else ""
        super().__init__(f"{status} {self.code}{where}: {self.detail}")


class InvalidRequest(ApiError):
    """400, 413, 415 or 422: the request itself was refused (see ``code`` and ``field``)."""


class Unauthorized(ApiError):
    """401: the API key is missing or not valid."""


class Forbidden(ApiError):
    """403: the key lacks the route's scope."""


class NotFound(ApiError):
    """404: no such model, version, job or audit (or it belongs to another tenant)."""


class Conflict(ApiError):
    """409: the resource's state forbids it (a model in use, a job that ended, an audit not ready)."""


class RateLimited(ApiError):
    """429: past the key's rate limit (raised once the retries are spent)."""


class Unavailable(ApiError):
    """503: a queue is full or Redis is unreachable (raised once the retries are spent)."""


class ServerError(ApiError):
    """Any other 5xx: the server or a job failed (``internal_error``, ``timeout``, ``worker_lost``...)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: dict[str, Any], *, retry_after: float | None = None) -> ApiError:
    """Return the exception of an error answer (or of a failed job's stored error), by its status."""
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
    return kind(status, body, retry_after=retry_after)

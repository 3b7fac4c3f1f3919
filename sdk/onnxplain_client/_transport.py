"""What both clients do with a response: the retry policy (429/503, ``Retry-After``) and error reading."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from typing import Any

import httpx

from onnxplain_client.errors import ApiError, error_for

RETRYABLE = frozenset({429, 503})
"""Statuses answered before any work was done (rate limit, full queue, Redis away): safe to send again."""


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP date (RFC 9110); ``None`` if absent
    or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How 429 and 503 answers are retried.

    Attributes:
        retries: Retries after the first attempt (0: never retry).
        max_wait: The longest single wait in seconds, whatever ``Retry-After`` says.
        backoff: The first wait when the answer has no ``Retry-After``; it doubles on each retry.
    """

    retries: int = 3
    max_wait: float = 30.0
    backoff: float = 0.5

    def delay(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or ``None`` when the answer is final."""
        if response.status_code not in RETRYABLE or attempt >= self.retries:
            return None
        asked = retry_after_seconds(response.headers.get("Retry-After"))
        wait = asked if asked is not None else self.backoff * 2**attempt
        return min(max(wait, 0.0), self.max_wait)


def error_of(response: httpx.Response) -> ApiError:
    """The exception an error response (already read) stands for."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"detail": response.text}
    return error_for(response.status_code, body, retry_after=retry_after_seconds(response.headers.get("Retry-After")))


def job_error(resource: dict[str, Any]) -> ApiError:
    """The exception of a failed or canceled job or audit (its stored error, with its status)."""
    error: dict[str, Any] = resource.get("error") or {"code": resource.get("status", "error")}
    return error_for(int(error.get("status", 422)), error)


def settled(resource: dict[str, Any]) -> bool:
    """Whether a polled job or audit succeeded (``False`` while it is queued or running).

    Raises:
        ApiError: It failed or was canceled (its stored error, by its status).
    """
    if resource["status"] == "succeeded":
        return True
    if resource["status"] in ("failed", "canceled"):
        raise job_error(resource)
    return False


def client_headers(api_key: str | None, environ: dict[str, str]) -> dict[str, str]:
    """The headers every call carries: the bearer key (``ONNXPLAIN_API_KEY`` when none is given)."""
    key = api_key if api_key is not None else environ.get("ONNXPLAIN_API_KEY")
    headers = {"User-Agent": "onnxplain-client/0.1.0"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers

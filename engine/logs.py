"""Log lines as JSON, each carrying the request id of the request (API) or job (worker) it belongs to.

The API sets :data:`REQUEST_ID` for the length of a request and a worker for the length of a job, so every line
logged meanwhile, by any library, carries ``request_id``. Lines passed ``extra={"fields": {...}}`` carry those
fields as top-level keys (the one line per request and per job do).

Example of a line::

    {"ts": "2026-12-02T01:02:03.456Z", "level": "INFO", "logger": "onnxplain.job", "message": "job succeeded",
     "request_id": "3f1c...", "job_id": "explain-...", "kind": "explain", "duration_s": 0.42}
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from contextvars import ContextVar
from typing import Any

import orjson

REQUEST_ID: ContextVar[str | None] = ContextVar("onnxplain_request_id", default=None)
"""The id of the request or job being handled in this thread, if any."""

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


def valid_request_id(value: object) -> str | None:
    """Return ``value`` when it is a usable request id (1-64 of ``A-Za-z0-9._:-``, alphanumeric first), else None.

    Anything else (long, spaces, quotes, control characters) is never logged or echoed.
    """
    return value if isinstance(value, str) and _SAFE_ID.fullmatch(value) else None


def new_request_id() -> str:
    """Return a fresh random request id (32 hex digits)."""
    return os.urandom(16).hex()  # uuid4's object and version bits cost more and add nothing here


_SECOND: tuple[int, str] = (-1, "")
"""The last second formatted, and its text: formatting the date is most of a timestamp's cost."""


def _timestamp(created: float) -> str:
    """Return ``created`` as ``2026-12-02T01:02:03.456Z`` (UTC, milliseconds truncated, as ``isoformat`` does)."""
    global _SECOND
    second, micros = divmod(round(created * 1_000_000), 1_000_000)
    cached, prefix = _SECOND  # one tuple: another thread's update is seen whole or not at all
    if cached != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _SECOND = (second, prefix)
    return f"{prefix}.{micros // 1000:03d}Z"


def _dumps(line: dict[str, Any]) -> str:
    try:
        # orjson: the request log writes a line per request, and json.dumps was a fifth of a :predict's time.
        return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is one: an integer past 64 bits, a cycle in a field
        return json.dumps(line, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request id, extra ``fields``, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one line of JSON."""
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _dumps(line)


class _TextWithRequestId(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = REQUEST_ID.get()
        return f"{text} request_id={request_id}" if request_id else text


_installed: list[logging.Handler] = []


def configure_logging(log_format: str) -> None:
    """Send the root logger's INFO lines to stderr as JSON (``json``) or classic text (``text``); shap's from WARNING.

    Calling it again replaces the handler it installed before (not others: a test runner's stay). Libraries that
    add their own handler only when none is effective (RQ's worker log) then log through this one.
    """
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextWithRequestId("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(logging.INFO)
    # shap logs every intermediate array at INFO (kernel_shap_reference, the benchmarks' raw shap): noise, and
    # the arrays' repr costs time in whatever process explains.
    logging.getLogger("shap").setLevel(logging.WARNING)

"""The one way onnxplain writes times: RFC 3339 in UTC with milliseconds and ``Z``.

Example: ``2026-12-01T21:30:07.123Z`` (never ``+00:00``, never ``+00:00Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_utc(moment: datetime) -> str:
    """Return ``moment`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Args:
        moment: An aware datetime, or a naive one meaning UTC (as RQ records its times).
    """
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S.") + f"{aware.microsecond // 1000:03d}Z"


def utc_now() -> str:
    """Return the current time, formatted by :func:`format_utc`."""
    return format_utc(datetime.now(UTC))


def parse_utc(stamp: str) -> datetime:
    """Read a time written by :func:`format_utc` (or any RFC 3339 time) as an aware UTC datetime."""
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)

"""Strict reading of JSON request bodies and query parameters."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from flask import g, request
from werkzeug.exceptions import UnsupportedMediaType

from engine.errors import InvalidRequest, PayloadTooLarge, UnknownField
from service.json_text import read_json

# Fields whose readers refuse NaN/Infinity themselves, naming the row and column.
ROW_FIELDS = frozenset({"instances", "rows", "inputs"})


def body_bytes() -> bytes:
    """Return the request body, read at most once and never past the route's size cap.

    A chunked body has no Content-Length to refuse up front, so the cap is enforced while reading.

    Raises:
        PayloadTooLarge: The body is over ``request.max_content_length``.
    """
    cached: bytes | None = g.get("onnxplain_body")
    if cached is not None:
        return cached
    limit = request.max_content_length
    length = request.content_length
    if limit is None:
        data = request.get_data(cache=False)
    elif length is not None and length <= limit:
        # Werkzeug has refused a declared length over the cap already, and its stream ends at the declared
        # length: read exactly that (asking for the cap + 1 cost more than the read on every small body).
        data = request.stream.read(length)
    else:
        data = request.stream.read(limit + 1)
        # Werkzeug's stream stops quietly at the cap; one more byte tells a cut body from a whole one.
        if len(data) > limit or (len(data) == limit and length is None and request.stream.read(1)):
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    g.onnxplain_body = data
    return data


def json_object(allowed: Collection[str], *, required: Collection[str] = (), any_type: bool = False) -> dict[str, Any]:
    """Return the request's JSON object, rejecting unknown and missing fields.

    Args:
        allowed: Field names the route accepts.
        required: Field names that must be present.
        any_type: Parse whatever the Content-Type says (V2 clients send none).

    Raises:
        UnsupportedMediaType: The body is not declared as JSON.
        InvalidRequest: ``invalid_json`` or a missing field.
        UnknownField: A field outside ``allowed``.
    """
    if not any_type and not request.is_json:
        raise UnsupportedMediaType("send the body as application/json")
    raw = body_bytes()
    data = read_json(raw, limit=len(raw), non_finite_ok=ROW_FIELDS)
    return check_object(data, allowed, required=required)


def check_object(
    data: object, allowed: Collection[str], *, required: Collection[str] = (), where: str = ""
) -> dict[str, Any]:
    """Check a decoded JSON value is an object with known fields only."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where or 'the body'} must be a JSON object", code="invalid_json", field=where or None)
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in allowed:
            raise UnknownField(f"unknown field {key!r}", field=prefix + key)
    for key in sorted(required):
        if key not in data:
            raise InvalidRequest(f"{key!r} is required", code="missing_field", field=prefix + key)
    return data


# ASCII digits only: int() also takes "١" (Arabic-Indic one), "1_000" and " 7 ", and str.isdigit() takes "³".
_DIGITS = re.compile(r"[0-9]{1,18}")
MAX_INT = 2**53  # the largest integer every JSON reader keeps exact


def parse_int(value: object, field: str, *, minimum: int = 1, maximum: int = MAX_INT) -> int:
    """Read an integer from a path segment, query string, header or JSON number.

    This is the one place the API turns client text into an integer.

    Args:
        value: A ``str`` (ASCII digits only) or a JSON integer (not a bool).
        field: The name reported in the problem's ``field``.
        minimum: Least accepted value.
        maximum: Largest accepted value.

    Raises:
        InvalidRequest: ``invalid_parameter`` naming ``field``.
    """
    if isinstance(value, str):
        if value.isascii() and value.isdigit() and len(value) > 18:
            value = maximum + 1  # digits, but past any accepted value: the range message below says so
        elif not _DIGITS.fullmatch(value):
            raise InvalidRequest(
                f"{field} must be written in ASCII digits 0-9, got {value[:40]!r}",
                code="invalid_parameter",
                field=field,
            )
        else:
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidRequest(
            f"{field} must be an integer from {minimum} to {maximum}", code="invalid_parameter", field=field
        )
    return value


def optional_int(
    value: object, field: str, *, minimum: int = 1, maximum: int = MAX_INT, text: bool = False
) -> int | None:
    """Read an optional integer (see :func:`parse_int`); ``None`` means absent.

    Args:
        value: A decoded JSON value, or with ``text`` a query-string value (where empty means absent).
        field: The name reported in the problem's ``field``.
        minimum: Least accepted value.
        maximum: Largest accepted value.
        text: The value comes from a query string; in JSON a string is not an integer.
    """
    if value is None or (text and value == ""):
        return None
    if isinstance(value, str) and not text:
        raise InvalidRequest(f"{field} must be a JSON integer, not a string", code="invalid_parameter", field=field)
    return parse_int(value, field, minimum=minimum, maximum=maximum)


def check_parts(allowed: Collection[str]) -> None:
    """Reject multipart parts (files or fields) outside ``allowed``.

    Raises:
        UnknownField: Naming the unknown part.
    """
    for key in list(request.files) + list(request.form):
        if key not in allowed:
            raise UnknownField(f"unknown part {key!r}", field=key)


def json_part(name: str, *, invalid_code: str = "invalid_json", limit: int = 1024 * 1024) -> object:
    """Decode the JSON sent in multipart part ``name`` (as a field or as a file), as safely as a body.

    Raises:
        InvalidRequest: ``missing_field`` when absent, ``invalid_code`` when not JSON, or a code of
            :func:`~service.json_text.read_json`.
        PayloadTooLarge: The part is over ``limit`` bytes.
    """
    text: str | bytes | None = request.form.get(name)
    if text is None and name in request.files:
        text = request.files[name].read(limit + 1)
    if text is None:
        raise InvalidRequest(f"part {name!r} is required", code="missing_field", field=name)
    return read_json(text, where=name, limit=limit, invalid_code=invalid_code)

"""The one safe JSON reader for request bodies and multipart JSON parts.

Python's ``json`` module takes ``NaN``/``Infinity``, keeps the last of duplicate keys, turns ``1e400`` into
infinity, parses 400-digit integers that overflow every numpy type later, and raises ``RecursionError`` (a 500)
on deep nesting. :func:`read_json` refuses all of these as a 422 naming the field, except non-finite numbers
under the fields that check them themselves with a better message (rows: ``non_finite`` naming row and column).
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from itertools import chain
from typing import Any, cast

import orjson
from flask.json.provider import DefaultJSONProvider
from werkzeug.sansio.response import Response as SansioResponse

from engine.errors import InvalidRequest, PayloadTooLarge
from engine.jobs import dumps_json, json_default

MAX_DEPTH = 32
"""Deepest nesting of arrays and objects any request needs (rows are 2-3 levels deep)."""

MAX_INT = 2**63 - 1
"""Largest integer magnitude accepted anywhere: every integer fits int64."""


# The body's shape for the two scans below, in C (bytes.translate, then substring search; a regex over a
# 6 kB body took 100-250 µs): every digit becomes 0, e and E become e, signs stay, everything else a space.
_SHAPE = bytes(
    ord("0") if chr(b).isdigit() and b < 128 else ord("e") if b in b"eE" else b if b in b"+-" else ord(" ")
    for b in range(256)
)
_LONG_DIGITS = b"0" * 19
"""19 digits in a row: the only way to an integer past int64 (and one way to a float past 1.8e308)."""
_LONG_EXPONENTS = (b"e000", b"e+000", b"e-000")
"""An exponent of three or more digits: the other way to overflow a float."""


class _HugeInt(int):
    """An integer literal past :data:`MAX_INT`, kept aside so the walk can name its field."""


class _Refused(ValueError):
    """A duplicate key, raised from inside the parser."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _Refused(f"duplicate key {duplicate[:80]!r}")
    return out


def read_json(
    raw: bytes | str,
    *,
    where: str = "",
    limit: int,
    non_finite_ok: Collection[str] = (),
    invalid_code: str = "invalid_json",
) -> Any:
    """Decode untrusted JSON text.

    Args:
        raw: The body or part.
        where: Its name in error fields (``""`` for a whole body, ``"card"`` for a part).
        limit: Largest accepted size in bytes.
        non_finite_ok: Top-level fields under which ``NaN``/``Infinity`` pass through (their readers check them).
        invalid_code: The code of text that is not JSON at all.

    Returns:
        The decoded value.

    Raises:
        PayloadTooLarge: Over ``limit``.
        InvalidRequest: ``invalid_code`` (not JSON), ``duplicate_key``, ``json_too_deep``,
            ``number_out_of_range`` or ``non_finite_number`` (with the field).
    """
    if len(raw) > limit:
        raise PayloadTooLarge(f"{where or 'the body'} is larger than {limit} bytes", field=where or None)
    if isinstance(raw, bytes):
        quick = _quick(raw, MAX_DEPTH)
        if quick is not _UNSURE:
            return quick
    seen = {"special": False}

    def constant(text: str) -> float:
        seen["special"] = True
        return float(text)  # NaN, Infinity, -Infinity

    def number(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            seen["special"] = True
        return value

    def integer(text: str) -> int:
        # int() of a 5000-digit literal raises (Python's digit limit); no literal past 20 characters fits int64.
        if len(text) <= 20 and -MAX_INT <= (value := int(text)) <= MAX_INT:
            return value
        seen["special"] = True
        return _HugeInt(0)

    # A float overflows to infinity only past 1.8e308: with an exponent of 100 or more, or with 19 or more
    # digits in a row (below both, |x| < 1e19 × 1e99). Most bodies (tolist()'s "1.2e-05" included) have neither
    # and skip the per-float hook.
    text = raw if isinstance(raw, bytes) else raw.encode(errors="replace")
    shape = text.translate(_SHAPE)
    # Likewise only a run of 19 digits can be an integer past int64.
    long_digits = _LONG_DIGITS in shape
    exponent = long_digits or any(e in shape for e in _LONG_EXPONENTS)
    try:
        data = json.loads(
            raw or b"null",
            object_pairs_hook=_pairs,
            parse_constant=constant,
            parse_float=number if exponent else None,
            parse_int=integer if long_digits else None,
        )
    except _Refused as exc:
        raise InvalidRequest(f"{where or 'the body'} has a {exc}", code="duplicate_key", field=where or None) from None
    except RecursionError:
        raise InvalidRequest(
            f"{where or 'the body'} is nested deeper than {MAX_DEPTH} levels", code="json_too_deep", field=where or None
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"{where or 'the body'} is not valid JSON: {str(exc)[:200]}", code=invalid_code, field=where or None
        ) from None
    _walk(data, where, MAX_DEPTH, set(non_finite_ok) if seen["special"] else None)
    return data


_UNSURE = object()
_NUMBERS = frozenset({int, float})
_FLAGS = frozenset({bool, type(None)})
_LIST = frozenset({list})


def _quick(raw: bytes, max_depth: int) -> Any:
    """orjson's reading of ``raw`` when it is provably the careful reader's below; :data:`_UNSURE` otherwise.

    orjson (10× faster; a 64-row body: 16 against 125 µs, and no scans of the text) refuses NaN, infinities,
    floats that overflow, bad UTF-8 and nesting past 1024 itself; those, and every case below that it would read
    differently, go the careful way, which names the field:

    * duplicate keys, which orjson keeps the last of. Every ``:`` of JSON text is a key's or inside a string;
      when no string holds one, the text's ``:`` count is its number of members, and the objects read hold as
      many keys only if no key came twice.
    * integers past ±(2**63 - 1): orjson reads them as int up to 2**64 and as float beyond, so a float that
      large may have been an integer literal.
    * nesting ``max_depth`` deep or more.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNSURE
    members = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is dict:
            members += len(value)
            if any(":" in key for key in value):
                return _UNSURE
            items = value.values()
        elif kind is list:
            items = value
        elif kind is str:
            if ":" in value:
                return _UNSURE
            continue
        elif kind in _NUMBERS:
            if not -MAX_INT <= value <= MAX_INT:
                return _UNSURE
            continue
        else:
            continue  # true, false, null
        if depth >= max_depth:
            return _UNSURE
        kinds = set(map(type, items))
        if kinds == _LIST and depth + 1 < max_depth:
            cells = set(map(type, chain.from_iterable(items)))
            if cells <= _NUMBERS:
                # Rows of numbers, the common body: the range of all of them in two C calls, no visit per row.
                if cells and not (
                    -MAX_INT <= min(chain.from_iterable(items)) and max(chain.from_iterable(items)) <= MAX_INT
                ):
                    return _UNSURE
                continue
        if kinds <= _NUMBERS and items:
            # A row of numbers: its range in two C calls rather than a visit per number.
            if not (-MAX_INT <= min(items) and max(items) <= MAX_INT):
                return _UNSURE
        elif not kinds <= _FLAGS:
            stack.extend((item, depth + 1) for item in items if type(item) not in _FLAGS)
    return data if raw.count(b":") == members else _UNSURE


def _shallow(data: Any, max_depth: int) -> bool:
    """Whether no array or object of ``data`` lies ``max_depth`` or more levels deep (the parser's exact types)."""
    stack: list[tuple[Any, int]] = [(data, 0)] if type(data) in _CONTAINERS else []
    while stack:
        value, depth = stack.pop()
        if depth >= max_depth:
            return False
        stack.extend(
            (item, depth + 1)
            for item in (value.values() if type(value) is dict else value)
            if type(item) in _CONTAINERS
        )
    return True


_CONTAINERS = (dict, list)


def _walk(data: Any, where: str, max_depth: int, non_finite_ok: set[str] | None) -> None:
    """Check the nesting depth everywhere and, when the parser saw a special number, where it is.

    ``non_finite_ok`` is ``None`` when no special number was seen (only the depth is checked); otherwise huge
    integers are refused everywhere and non-finite floats outside the fields it names.
    """
    specials = non_finite_ok is not None
    if not specials and _shallow(data, max_depth):
        return  # the common case, without building a path per container (64 rows: 180 → 40 µs)
    stack: list[tuple[Any, int, str, bool]] = [(data, 0, where, specials)]
    while stack:
        value, depth, path, finite = stack.pop()
        if isinstance(value, dict | list):
            if depth >= max_depth:
                raise InvalidRequest(
                    f"{path or 'the body'} is nested deeper than {max_depth} levels", code="json_too_deep", field=path
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(item, dict | list) or (specials and isinstance(item, float | _HugeInt)):
                    child = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))
                    # The row readers check non-finite values themselves, naming row and column.
                    keep = finite and not (depth == 0 and non_finite_ok is not None and key in non_finite_ok)
                    stack.append((item, depth + 1, child, keep))
        elif isinstance(value, _HugeInt):
            raise InvalidRequest(
                f"{path or 'the body'} is an integer outside ±{MAX_INT}", code="number_out_of_range", field=path or None
            )
        elif finite and isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequest(
                f"{path or 'the body'} is not a finite number", code="non_finite_number", field=path or None
            )


class FastJSONProvider(DefaultJSONProvider):
    """Flask's JSON responses (``jsonify``) written by orjson: the same JSON values, 10-20× faster on large
    explanation results. Only responses change: ``dumps`` (the test client's bodies) stays Flask's, and request
    bodies are read by :func:`read_json`.

    Like Flask's provider it writes dates as HTTP dates and dataclasses as objects (both handed to Flask's
    ``default``); unlike it, it writes non-ASCII characters as UTF-8 rather than ``\\u`` escapes, and a
    non-finite float (which no response should hold) as ``null`` rather than the invalid ``NaN``.
    """

    def _bytes(self, obj: Any) -> bytes:
        option = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
        return dumps_json(obj, option=option | (orjson.OPT_SORT_KEYS if self.sort_keys else 0), default=self._default)

    def _default(self, value: object) -> Any:
        return json_default(value) if isinstance(value, float | int) else self.default(value)

    def response(self, *args: Any, **kwargs: Any) -> SansioResponse:
        """The ``jsonify`` response, its body encoded once (Flask's indented debug output stays Flask's)."""
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        response_class: Any = self._app.response_class  # typed as werkzeug's sans-IO base, which takes no bytes
        return cast(SansioResponse, response_class(self._bytes(obj) + b"\n", mimetype=self.mimetype))

"""The body reader's orjson fast path answers exactly what the careful reader answers, or steps aside."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidRequest
from service.json_text import _UNSURE, MAX_DEPTH, _quick, read_json


def careful(raw: bytes) -> Any:
    """What the reader answers without its fast path: the value, or the refusal's (code, field)."""
    import service.json_text as module

    quick, module._quick = module._quick, lambda raw, depth: _UNSURE
    try:
        return read_json(raw, limit=len(raw) + 1, non_finite_ok={"instances"})
    except InvalidRequest as exc:
        return ("refused", exc.code, exc.field)
    finally:
        module._quick = quick


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (1, 1.0 and True differ; so do 0.0 and -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def agrees(raw: bytes) -> None:
    """The fast path's answer, when it gives one, is the careful reader's value."""
    quick = _quick(raw, MAX_DEPTH)
    if quick is not _UNSURE:
        answer = careful(raw)
        assert same(quick, answer), (raw, quick, answer)
        assert same(read_json(raw, limit=len(raw)), answer)


KEYS = st.text(alphabet='ab:\\"é\u2028 ', max_size=3)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet='ab:\\"é\u2028 ', max_size=4)
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=3), max_leaves=20
)


@given(VALUES, st.booleans())
def test_fast_path_matches_the_careful_reader_on_any_json(value: Any, ascii_only: bool) -> None:
    agrees(json.dumps(value, ensure_ascii=ascii_only).encode())


@given(st.dictionaries(KEYS, VALUES, min_size=1, max_size=3), st.integers(min_value=0, max_value=2), VALUES)
def test_a_key_twice_anywhere_is_never_taken_by_the_fast_path(members: dict[str, Any], which: int, other: Any) -> None:
    key = list(members)[which % len(members)]
    text = json.dumps(members)
    twice = text[:-1] + ", " + json.dumps(key) + ": " + json.dumps(other) + "}"
    for raw in (twice, '{"outer": ' + twice + "}", "[1, " + twice + "]"):
        assert _quick(raw.encode(), MAX_DEPTH) is _UNSURE
        assert careful(raw.encode()) == ("refused", "duplicate_key", None)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "\\u003a", "a": 1}',  # an escaped colon would hide the second "a" from the count
        b"[1, 9223372036854775808]",
        b"[-9223372036854775808]",
        b"[true, 99999999999999999999]",  # orjson reads an integer past 2**64 as a float
        b"[1e19]",
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),  # the careful reader refuses it
        b"[NaN]",
        b"",
        b'{"a": [1, 2], "a": [1, 2]}',
    ],
)
def test_what_orjson_would_read_differently_goes_the_careful_way(raw: bytes) -> None:
    assert _quick(raw, MAX_DEPTH) is _UNSURE


def test_rows_of_numbers_take_the_fast_path() -> None:
    raw = json.dumps({"instances": [[0.5, -1, 3e-5, 2**62]] * 64, "variant": "fp32"}).encode()
    assert same(_quick(raw, MAX_DEPTH), careful(raw))
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert same(_quick(deepest, MAX_DEPTH), careful(deepest))
    assert careful(b"[" + deepest + b"]")[:2] == ("refused", "json_too_deep")

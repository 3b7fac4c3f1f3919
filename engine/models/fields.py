"""Checks shared by the card's nested objects (``image``, ``text``): an object of known fields, bounded ints."""

from __future__ import annotations

from typing import Any

from engine.errors import InvalidRequest, UnknownField


def card_object(data: object, fields: frozenset[str] | set[str], where: str) -> dict[str, Any]:
    """Return ``data`` as an object whose keys are all in ``fields``.

    Raises:
        InvalidRequest: ``invalid_card`` when ``data`` is not an object.
        UnknownField: A key this version does not know, named ``<where>.<key>``.
    """
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where} must be an object", code="invalid_card", field=where)
    for key in data:
        if key not in fields:
            raise UnknownField(f"unknown field {key!r} in {where}", field=f"{where}.{key}")
    return data


def card_int(value: object, field: str, maximum: int) -> int:
    """Return ``value`` when it is an integer in ``[1, maximum]`` (booleans are not integers here).

    Raises:
        InvalidRequest: ``invalid_card`` naming ``field``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidRequest(f"must be an integer in [1, {maximum}]", code="invalid_card", field=field)
    return value

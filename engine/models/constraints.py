"""What a counterfactual may change: the feature constraints of a model card or a request.

One JSON shape serves the card (``card.constraints``, optional) and a ``:counterfactual`` request
(``constraints``); the request's entries add to the card's (see :meth:`Constraints.merged`)::

    {"immutable": ["sex", "age"],
     "ranges": {"income": [0, 250000]},
     "directions": {"debt": "decrease_only", "income": "increase_only"},
     "integer": ["children"],
     "categories": {"housing": ["own", "rent"]}}

Ranges, directions and integers apply to numeric features, allowed categories to categorical ones; any feature
may be immutable. A range bound may be ``null`` (open).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from engine.errors import InvalidRequest, UnknownField

DIRECTIONS = ("any", "increase_only", "decrease_only")
"""How a numeric feature may move."""

FIELDS = ("immutable", "ranges", "directions", "integer", "categories")
"""The keys of a constraints object."""


class FeatureLike(Protocol):
    """What the parser needs of a card feature (``engine.models.card.Feature``)."""

    @property
    def name(self) -> str: ...  # noqa: D102

    @property
    def type(self) -> str: ...  # noqa: D102

    @property
    def categories(self) -> tuple[str, ...]: ...  # noqa: D102


Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Constraints:
    """Feature constraints, validated against a card's features.

    Attributes:
        immutable: Features that must not change.
        ranges: Allowed ``(low, high)`` of numeric features (``None``: open).
        directions: ``increase_only``, ``decrease_only`` or ``any`` per numeric feature.
        integer: Numeric features that take whole values only.
        categories: Allowed categories per categorical feature.
    """

    immutable: frozenset[str] = frozenset()
    ranges: Mapping[str, Bounds] = field(default_factory=dict)
    directions: Mapping[str, str] = field(default_factory=dict)
    integer: frozenset[str] = frozenset()
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.immutable or self.ranges or self.directions or self.integer or self.categories)

    def merged(self, request: Constraints) -> Constraints:
        """Return these (the card's) constraints with a request's added: immutables and integers are the union;
        for a feature named in both, the request's range, direction (``any`` lifts the card's) or categories
        replace the card's."""
        return Constraints(
            immutable=self.immutable | request.immutable,
            ranges={**self.ranges, **request.ranges},
            directions={k: v for k, v in {**self.directions, **request.directions}.items() if v != "any"},
            integer=self.integer | request.integer,
            categories={**self.categories, **request.categories},
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the constraints as JSON (empty entries left out)."""
        out: dict[str, Any] = {}
        if self.immutable:
            out["immutable"] = sorted(self.immutable)
        if self.ranges:
            out["ranges"] = {k: list(v) for k, v in self.ranges.items()}
        if self.directions:
            out["directions"] = dict(self.directions)
        if self.integer:
            out["integer"] = sorted(self.integer)
        if self.categories:
            out["categories"] = {k: list(v) for k, v in self.categories.items()}
        return out

    @classmethod
    def parse(cls, data: object, features: Sequence[FeatureLike], *, where: str, code: str) -> Constraints:
        """Validate a constraints object against ``features``.

        Args:
            data: The decoded JSON (``None`` means none).
            features: The card's features.
            where: JSON path of the object, for error fields (``card.constraints``, ``constraints``).
            code: The error code of a bad value (``invalid_card``, ``invalid_constraints``).

        Raises:
            InvalidRequest: A value of the wrong type, an unknown feature, a constraint that does not suit the
                feature's type, an empty range or an unknown category.
            UnknownField: A key other than :data:`FIELDS`.
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidRequest(f"{where} must be an object", code=code, field=where)
        for key in data:
            if key not in FIELDS:
                raise UnknownField(
                    f"unknown field {key!r} in {where}; known: {', '.join(FIELDS)}", field=f"{where}.{key}"
                )
        kinds = {f.name: f for f in features}

        def feature(name: object, at: str, kind: str | None) -> str:
            if not isinstance(name, str) or name not in kinds:
                raise InvalidRequest(f"{name!r} is not a feature of the model", code="unknown_feature", field=at)
            if kind is not None and kinds[name].type != kind:
                raise InvalidRequest(f"{at} applies to {kind} features; {name!r} is not one", code=code, field=at)
            return name

        def names(key: str, kind: str | None) -> frozenset[str]:
            value = data.get(key, [])
            if not isinstance(value, list):
                raise InvalidRequest(
                    f"{where}.{key} must be a list of feature names", code=code, field=f"{where}.{key}"
                )
            return frozenset(feature(n, f"{where}.{key}[{i}]", kind) for i, n in enumerate(value))

        def table(key: str) -> dict[str, Any]:
            value = data.get(key, {})
            if not isinstance(value, dict):
                raise InvalidRequest(
                    f"{where}.{key} must be an object keyed by feature", code=code, field=f"{where}.{key}"
                )
            return value

        ranges: dict[str, Bounds] = {}
        for name, bounds in table("ranges").items():
            at = f"{where}.ranges.{name}"
            feature(name, at, "numeric")
            if not isinstance(bounds, list) or len(bounds) != 2 or not all(_bound(b) for b in bounds):
                raise InvalidRequest(f"{at} must be [low, high] of finite numbers or null", code=code, field=at)
            low, high = (None if b is None else float(b) for b in bounds)
            if low is not None and high is not None and low > high:
                raise InvalidRequest(f"{at} is empty: {low:g} > {high:g}", code=code, field=at)
            ranges[name] = (low, high)
        directions: dict[str, str] = {}
        for name, direction in table("directions").items():
            at = f"{where}.directions.{name}"
            feature(name, at, "numeric")
            if direction not in DIRECTIONS:
                raise InvalidRequest(f"{at} must be one of {list(DIRECTIONS)}", code=code, field=at)
            # "any" is kept: in a request it lifts the card's direction for that feature (see merged).
            directions[name] = direction
        categories: dict[str, tuple[str, ...]] = {}
        for name, allowed in table("categories").items():
            at = f"{where}.categories.{name}"
            feature(name, at, "categorical")
            known = kinds[name].categories
            if not isinstance(allowed, list) or not allowed or not all(a in known for a in allowed):
                raise InvalidRequest(
                    f"{at} must be a non-empty list of categories of {name!r}: {list(known)}", code=code, field=at
                )
            categories[name] = tuple(c for c in known if c in allowed)
        return cls(
            immutable=names("immutable", None),
            ranges=ranges,
            directions=directions,
            integer=names("integer", "numeric"),
            categories=categories,
        )


def _bound(value: object) -> bool:
    """A range bound: ``null`` or a finite JSON number."""
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

"""The feasible moves of each feature: a card's and a request's constraints over the background's ranges.

Everything is in raw feature space (categorical features as category codes). A numeric feature may move within
``[low, high]`` (its constraint range, else the background's; a ``null`` bound keeps the background's), in its
allowed direction from the row's value, to whole values when it is an integer; a categorical one may take its
allowed categories; an immutable one stays. Distances are L1 with each numeric feature scaled by its median
absolute deviation (MAD) in the background and 1 per changed category.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from engine.arrays import BoolArray, FloatArray
from engine.models.card import ModelCard
from engine.models.constraints import Constraints

_A = TypeVar("_A", FloatArray, BoolArray)

INCREASE = 1
DECREASE = -1


@dataclass(frozen=True)
class Space:
    """The feasible moves of a model's features (``d`` of them).

    Attributes:
        names: Feature names.
        categorical: ``(d,)`` whether each feature is categorical.
        mutable: ``(d,)`` whether each may change.
        low, high: ``(d,)`` the allowed range of numeric features.
        direction: ``(d,)`` +1 increase only, -1 decrease only, 0 either way.
        integer: ``(d,)`` numeric features that take whole values.
        allowed: Per feature, the allowed category codes (empty for numeric features).
        scale: ``(d,)`` the MAD of each numeric feature in the background (its std, else 1, when the MAD is 0).
        seen_low, seen_high: ``(d,)`` the background's per-feature range.
        background: ``(m, d)`` the background rows (for plausibility and sampling).
        counts: Per feature, its number of categories (0 for numeric features).
    """

    names: list[str]
    categorical: BoolArray
    mutable: BoolArray
    low: FloatArray
    high: FloatArray
    direction: FloatArray
    integer: BoolArray
    allowed: list[FloatArray]
    scale: FloatArray
    seen_low: FloatArray
    seen_high: FloatArray
    background: FloatArray
    counts: list[int]

    def interval(self, x: FloatArray, j: int) -> tuple[float, float]:
        """The values numeric feature ``j`` of row ``x`` may take (``low > high`` when none but its own)."""
        low, high = float(self.low[j]), float(self.high[j])
        if self.direction[j] == INCREASE:
            low = max(low, float(x[j]))
        elif self.direction[j] == DECREASE:
            high = min(high, float(x[j]))
        if self.integer[j]:
            low, high = float(np.ceil(low)), float(np.floor(high))
        return low, high

    def cost(self, x: FloatArray, C: FloatArray) -> FloatArray:
        """MAD-scaled L1 distance from ``x`` to each row of ``C`` (1 per changed category)."""
        return np.asarray(self.contributions(x, C).sum(axis=1), dtype=np.float64)

    def contributions(self, x: FloatArray, C: FloatArray) -> FloatArray:
        """``(n, d)`` each feature's part of :meth:`cost`."""
        delta = np.abs(np.atleast_2d(C) - x)
        return np.where(self.categorical, (delta > 0.5).astype(np.float64), delta / self.scale)

    def respects(self, x: FloatArray, c: FloatArray) -> list[str]:
        """Name the constraints ``c`` breaks as a move from ``x`` (empty when it keeps them all)."""
        broken: list[str] = []
        for j, name in enumerate(self.names):
            if c[j] == x[j]:
                continue
            if not self.mutable[j]:
                broken.append(f"immutable {name}")
            elif self.categorical[j]:
                if not np.any(self.allowed[j] == c[j]):
                    broken.append(f"categories of {name}")
            else:
                low, high = self.interval(x, j)
                if not low - 1e-9 <= c[j] <= high + 1e-9:
                    broken.append(f"range or direction of {name}")
                if self.integer[j] and c[j] != np.round(c[j]):
                    broken.append(f"integer {name}")
        return broken

    def relaxations(self) -> list[tuple[str, str, Space]]:
        """Each constraint lifted alone, as ``(constraint, feature, wider space)``, to find which bound hardest.

        Immutability, directions and allowed categories are dropped; a range (the constraint's or the
        background's) is widened to twice the background's span on each side.
        """
        out: list[tuple[str, str, Space]] = []
        for j, name in enumerate(self.names):
            if not self.mutable[j]:
                out.append(("immutable", name, replace(self, mutable=_set(self.mutable, j, True))))
                continue
            if self.categorical[j]:
                if len(self.allowed[j]) < self.counts[j]:
                    allowed = list(self.allowed)
                    allowed[j] = np.arange(self.counts[j], dtype=np.float64)
                    out.append(("categories", name, replace(self, allowed=allowed)))
                continue
            if self.direction[j] != 0:
                out.append(("direction", name, replace(self, direction=_set(self.direction, j, 0.0))))
            span = max(float(self.seen_high[j] - self.seen_low[j]), float(self.scale[j]))
            out.append(
                (
                    "range",
                    name,
                    replace(
                        self,
                        low=_set(self.low, j, min(float(self.low[j]), float(self.seen_low[j]) - 2 * span)),
                        high=_set(self.high, j, max(float(self.high[j]), float(self.seen_high[j]) + 2 * span)),
                    ),
                )
            )
        return out


def _set(array: _A, j: int, value: float | bool) -> _A:
    out = array.copy()
    out[j] = value
    return out


def build_space(card: ModelCard, constraints: Constraints, background: FloatArray) -> Space:
    """The feasible moves of ``card``'s features under ``constraints``, ranges and scales from ``background``.

    Args:
        card: A tabular model card.
        constraints: The card's constraints merged with the request's.
        background: ``(m, d)`` background rows, ``m >= 1``.
    """
    d = len(card.features)
    categorical = np.array([f.type == "categorical" for f in card.features], dtype=bool)
    seen_low = background.min(axis=0).astype(np.float64)
    seen_high = background.max(axis=0).astype(np.float64)
    median = np.median(background, axis=0)
    mad = np.median(np.abs(background - median), axis=0)
    std = background.std(axis=0)
    scale = np.where(mad > 0, mad, np.where(std > 0, std, 1.0)).astype(np.float64)
    low, high = seen_low.copy(), seen_high.copy()
    direction = np.zeros(d)
    allowed: list[FloatArray] = []
    for j, feature in enumerate(card.features):
        if feature.name in constraints.ranges:
            lo, hi = constraints.ranges[feature.name]
            low[j] = seen_low[j] if lo is None else lo
            high[j] = seen_high[j] if hi is None else hi
        direction[j] = {"increase_only": INCREASE, "decrease_only": DECREASE}.get(
            constraints.directions.get(feature.name, "any"), 0
        )
        if feature.type == "categorical":
            names = constraints.categories.get(feature.name, feature.categories)
            allowed.append(np.array([feature.categories.index(c) for c in names], dtype=np.float64))
        else:
            allowed.append(np.zeros(0))
    return Space(
        names=card.feature_names,
        categorical=categorical,
        mutable=np.array([f.name not in constraints.immutable for f in card.features], dtype=bool),
        low=low,
        high=high,
        direction=direction,
        integer=np.array([f.name in constraints.integer for f in card.features], dtype=bool),
        allowed=allowed,
        scale=scale,
        seen_low=seen_low,
        seen_high=seen_high,
        background=background,
        counts=[len(f.categories) for f in card.features],
    )

"""Our counterfactual search: seeded, vectorised, every candidate checked through the model in large batches.

For one row ``x`` it gathers valid candidates two ways and keeps ``k`` diverse, low-cost ones:

1. **Single-feature moves, exact.** Every mutable numeric feature is scanned along each allowed direction up to
   its bound (a grid of :data:`GRID` points, all features at once), then bisected (:data:`BISECT` halvings) to the
   nearest point that reaches the goal; integers are rounded away from the row and re-checked. Every allowed
   category of each categorical feature is tried. On a model monotone along a feature this is the exact
   minimum-cost move of that feature.
2. **Multi-feature moves, sampled.** ``samples`` candidates change a random 1..5 mutable features to values drawn
   from the background's column (uniform within the allowed interval when the drawn value is not allowed).
   The valid ones (the cheapest :data:`REFINE`) are pulled towards the row by bisection along the segment,
   sparsified greedily (each change reverted, most costly first, if the goal still holds) and pulled again.

The pool is ranked by cost (MAD-scaled L1) and ``k`` are chosen greedily: the cheapest, then each time the one
whose distance to those chosen minus its own cost is largest. When none is found, :func:`binding_constraints`
lifts each constraint alone and reports which would have allowed one, and at what cost (a search focused on the
lifted feature; the first :data:`DIAGNOSED_ROWS` such rows of a request).

Cost of one row (model rows evaluated) is :func:`evaluations_per_row`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine.arrays import BoolArray, FloatArray
from engine.recourse.goal import Goal
from engine.recourse.space import Space

ModelFn = Callable[[FloatArray], FloatArray]

GRID = 32
"""Points scanned along each single-feature segment."""
BISECT = 40
"""Halvings of a single-feature bracket (the bracket shrinks 2^40-fold)."""
LINE = 24
"""Halvings of a multi-feature candidate's segment towards the row."""
REFINE = 128
"""Most sampled valid candidates refined per row."""
MAX_CHANGES = 5
"""Most features one sampled candidate changes."""
NUDGE = 1e-6
"""A found boundary point is moved this fraction of its segment further into the valid side."""
DISTINCT = 0.01
"""Counterfactuals closer than this (MAD-scaled L1) to one already chosen count as the same."""
RELAXED_SAMPLES = 4
"""Sampled candidates of a relaxed search are ``samples // RELAXED_SAMPLES``."""
RELAXED_REFINE = 16
"""Most sampled valid candidates refined in a relaxed search."""
DIAGNOSED_ROWS = 10
"""Rows of one request whose not-found is diagnosed (which constraint bound hardest)."""


def evaluations_per_row(d: int, samples: int, categories: int = 0) -> int:
    """Model rows one row's search evaluates at most (without the not-found diagnosis).

    Args:
        d: Features.
        samples: Sampled multi-feature candidates.
        categories: Categories of all categorical features together.
    """
    singles = 2 * d * (GRID + BISECT + 1) + categories
    return singles + samples + min(samples, REFINE) * (2 * (LINE + 1) + d)


def diagnosis_evaluations(d: int, samples: int, categories: int = 0) -> int:
    """Model rows the not-found diagnosis of one row evaluates at most (each constraint lifted alone, at most
    two per feature, each a search focused on that feature)."""
    relaxed = max(1, samples // RELAXED_SAMPLES)
    one = 2 * (GRID + BISECT + 1) + categories + relaxed + min(relaxed, RELAXED_REFINE) * (2 * (LINE + 1) + d)
    return 2 * d * one


class _Checked:
    """The model's verdict on candidate rows: ``f`` then the goal, for any number of rows."""

    def __init__(self, f: ModelFn, goal: Goal) -> None:
        self.f, self.goal = f, goal

    def __call__(self, rows: FloatArray) -> BoolArray:
        if len(rows) == 0:
            return np.zeros(0, dtype=bool)
        return self.goal.reached(self.f(rows))


def find(
    f: ModelFn,
    space: Space,
    x: FloatArray,
    goal: Goal,
    *,
    k: int,
    samples: int,
    rng: np.random.Generator,
    refine: int = REFINE,
    focus: int | None = None,
) -> FloatArray:
    """Return up to ``k`` diverse valid counterfactuals of ``x``, cheapest first, ``(≤k, d)``.

    Args:
        f: The model, raw-feature rows to outputs.
        space: The feasible moves.
        x: ``(d,)`` the row.
        goal: The outcome to reach.
        k: Most counterfactuals returned.
        samples: Sampled multi-feature candidates.
        rng: The seeded generator (its draws make the answer reproducible).
        refine: Most sampled valid candidates refined.
        focus: Search only moves that change this feature (single moves of it, sampled moves including it).
    """
    valid = _Checked(f, goal)
    singles = single_moves(valid, space, x, only=focus)
    sampled = sample_moves(space, x, samples, rng, must=focus)
    sampled = sampled[valid(sampled)]
    if len(sampled) > refine:
        sampled = sampled[np.argsort(space.cost(x, sampled), kind="stable")[:refine]]
    sampled = pull(valid, space, x, sparsify(valid, space, x, pull(valid, space, x, sampled)))
    return diverse(space, x, np.vstack([singles, sampled]), k)


def single_moves(
    valid: Callable[[FloatArray], BoolArray], space: Space, x: FloatArray, *, only: int | None = None
) -> FloatArray:
    """The nearest valid point along each mutable feature (or feature ``only``) and allowed direction, and each
    allowed category."""
    d = len(x)
    features: list[int] = []
    ends: list[float] = []
    categorical: list[FloatArray] = []
    for j in np.flatnonzero(space.mutable):
        if only is not None and j != only:
            continue
        if space.categorical[j]:
            for code in space.allowed[j]:
                if code != x[j]:
                    row = x.copy()
                    row[j] = code
                    categorical.append(row)
            continue
        low, high = space.interval(x, int(j))
        if high < low:
            continue
        if high > x[j]:
            features.append(int(j))
            ends.append(high)
        if low < x[j]:
            features.append(int(j))
            ends.append(low)
    found = [np.asarray(categorical).reshape(-1, d)]
    if features:
        J, E = np.array(features), np.array(ends)
        s = len(J)
        start = x[J]
        steps = np.arange(1, GRID + 1) / GRID
        grid = start[:, None] + (E - start)[:, None] * steps[None, :]
        ok = valid(_with(x, np.repeat(J, GRID), grid.ravel())).reshape(s, GRID)
        has = ok.any(axis=1)
        first = np.argmax(ok, axis=1)
        J, E, start, grid, first = J[has], E[has], start[has], grid[has], first[has]
        rows = np.arange(len(J))
        bad = np.where(first == 0, start, grid[rows, np.maximum(first - 1, 0)])
        good = grid[rows, first]
        for _ in range(BISECT):
            mid = (bad + good) / 2
            ok = valid(_with(x, J, mid))
            good = np.where(ok, mid, good)
            bad = np.where(ok, bad, mid)
        # A point a hair inside the valid side, so another evaluation's rounding does not flip it back.
        good = good + NUDGE * (E - start)
        # Whole values: round away from the row (towards the valid side), within the interval.
        up = E > start
        good = np.where(space.integer[J], np.where(up, np.ceil(good - 1e-12), np.floor(good + 1e-12)), good)
        good = np.where(up, np.minimum(good, E), np.maximum(good, E))
        found.append(_with(x, J, good))
    candidates = np.vstack(found)
    return candidates[valid(candidates)]


def sample_moves(
    space: Space, x: FloatArray, n: int, rng: np.random.Generator, *, must: int | None = None
) -> FloatArray:
    """``n`` candidates, each changing 1..:data:`MAX_CHANGES` random mutable features within their constraints
    (feature ``must`` always among them, when it can move)."""
    movable: list[int] = []
    intervals: dict[int, tuple[float, float]] = {}
    for j in map(int, np.flatnonzero(space.mutable)):
        if space.categorical[j]:
            if np.any(space.allowed[j] != x[j]):
                movable.append(j)
            continue
        low, high = space.interval(x, j)
        if high > low or (high == low and low != x[j]):
            movable.append(j)
            intervals[j] = (low, high)
    C = np.repeat(x[None, :], n, axis=0)
    if not movable or n == 0:
        return C[:0]
    sizes = rng.integers(1, min(len(movable), MAX_CHANGES) + 1, size=n)
    ranks = np.argsort(rng.random((n, len(movable))), axis=1).argsort(axis=1)
    chosen = ranks < sizes[:, None]
    if must is not None and must in movable:
        chosen[:, movable.index(must)] = True
    m = len(space.background)
    for column, j in enumerate(movable):
        rows = chosen[:, column]
        if space.categorical[j]:
            C[rows, j] = rng.choice(space.allowed[j], size=int(rows.sum()))
            continue
        low, high = intervals[j]
        draw = space.background[rng.integers(0, m, size=n), j]
        outside = (draw < low) | (draw > high)
        draw[outside] = rng.uniform(low, high, size=int(outside.sum()))
        if space.integer[j]:
            draw = np.clip(np.round(draw), low, high)
        C[rows, j] = draw[rows]
    return C


def pull(valid: Callable[[FloatArray], BoolArray], space: Space, x: FloatArray, C: FloatArray) -> FloatArray:
    """Move each valid candidate's numeric changes towards ``x`` together, as far as the goal still holds.

    Categorical changes stay. Whole values are rounded away from the row and ranges re-imposed (the row itself
    may lie outside one); a candidate whose pulled point fails is kept as it was.
    """
    if len(C) == 0:
        return C
    low_t, high_t = np.zeros(len(C)), np.ones(len(C))

    def at(t: FloatArray) -> FloatArray:
        return np.where(space.categorical, C, x + t[:, None] * (C - x))

    for _ in range(LINE):
        mid = (low_t + high_t) / 2
        ok = valid(at(mid))
        high_t = np.where(ok, mid, high_t)
        low_t = np.where(ok, low_t, mid)
    pulled = at(np.minimum(high_t + NUDGE, 1.0))
    rounded = np.where(C > x, np.ceil(pulled - 1e-12), np.floor(pulled + 1e-12))
    pulled = np.where(space.integer & (C != x), rounded, pulled)
    changed = pulled != x
    pulled = np.where(changed & ~space.categorical, np.clip(pulled, space.low, space.high), pulled)
    ok = valid(pulled)
    return np.where(ok[:, None], pulled, C)


def sparsify(valid: Callable[[FloatArray], BoolArray], space: Space, x: FloatArray, C: FloatArray) -> FloatArray:
    """Revert each candidate's changes one at a time, most costly first, wherever the goal still holds."""
    if len(C) == 0:
        return C
    C = C.copy()
    order = np.argsort(-space.contributions(x, C), axis=1, kind="stable")
    rows = np.arange(len(C))
    for r in range(C.shape[1]):
        j = order[:, r]
        changed = np.flatnonzero(C[rows, j] != x[j])
        if changed.size == 0:
            continue
        trial = C[changed].copy()
        trial[np.arange(changed.size), j[changed]] = x[j[changed]]
        ok = valid(trial)
        C[changed[ok]] = trial[ok]
    return C


def diverse(space: Space, x: FloatArray, pool: FloatArray, k: int) -> FloatArray:
    """Choose up to ``k`` distinct candidates: the cheapest, then each time the one farthest from those chosen
    less its own cost; returned cheapest first."""
    pool = pool[np.any(pool != x, axis=1)]
    if len(pool) == 0:
        return pool
    cost = space.cost(x, pool)
    order = np.argsort(cost, kind="stable")
    pool, cost = pool[order], cost[order]
    chosen = [0]
    nearest = space.cost(pool[0], pool)
    while len(chosen) < k:
        # Searches from different starts converge on the same boundary point: within DISTINCT they are one.
        score = np.where(nearest > DISTINCT, nearest - cost, -np.inf)
        best = int(np.argmax(score))
        if not np.isfinite(score[best]):
            break
        chosen.append(best)
        nearest = np.minimum(nearest, space.cost(pool[best], pool))
    picked = np.array(sorted(chosen))
    return np.asarray(pool[picked], dtype=np.float64)


def binding_constraints(
    f: ModelFn,
    space: Space,
    x: FloatArray,
    goal: Goal,
    *,
    samples: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Which single constraint, lifted, would have allowed a counterfactual, cheapest first.

    Returns:
        ``[{"constraint", "feature", "cost"}]``: ``constraint`` is ``immutable``, ``direction``, ``range`` or
        ``categories``; ``cost`` is the cheapest counterfactual found with it lifted (empty when none helps).
    """
    out: list[dict[str, Any]] = []
    for constraint, feature, wider in space.relaxations():
        # Only moves of the lifted feature are new, so the search is focused on it.
        found = find(
            f,
            wider,
            x,
            goal,
            k=1,
            samples=max(1, samples // RELAXED_SAMPLES),
            rng=rng,
            refine=RELAXED_REFINE,
            focus=space.names.index(feature),
        )
        if len(found):
            out.append({"constraint": constraint, "feature": feature, "cost": float(wider.cost(x, found)[0])})
    return sorted(out, key=lambda item: item["cost"])


def _with(x: FloatArray, features: np.ndarray, values: FloatArray) -> FloatArray:
    """Copies of ``x``, row ``i`` with feature ``features[i]`` set to ``values[i]``."""
    rows = np.repeat(x[None, :], len(features), axis=0)
    rows[np.arange(len(features)), features] = values
    return rows

"""Anchors (Ribeiro, Singh & Guestrin, AAAI 2018), our own implementation: a rule that "anchors" a prediction.

An anchor is a set of feature conditions that holds for the row; its **precision** is the probability that the
model predicts the row's class for an input satisfying it, its **coverage** the share of inputs satisfying it.
Numeric features are discretised by the background's quartiles (the condition is the row's quartile bin),
categorical ones by equality. Inputs "satisfying an anchor" are drawn as in the paper's tabular sampler: a random
background row whose anchored features are replaced by background values that meet each condition.

The search is the paper's bottom-up beam search: anchors of one more condition are built from the beam, and
KL-LUCB (a best-arm bandit with Kullback-Leibler confidence bounds) picks the ``beam_size`` most precise with as
few model calls as it can. The first size at which an anchor's lower precision bound reaches ``threshold``
answers, with the widest coverage among those. The reported precision carries a two-sided KL confidence interval
at ``1 - delta`` from the samples of that anchor, and its coverage is measured on the background.

Attributions are not what anchors answer: ``values`` are 0 and ``base_values`` equal the model's output (so the
additivity residual is 0); the rule is in each target's ``quality.anchor``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask, ModelFn, library_failures, require_background

_ALPHA, _K = 1.1, 405.5
"""The constants of the paper's exploration rate (its ``compute_beta``)."""


@dataclass
class _Arm:
    """One candidate anchor's samples."""

    conditions: frozenset[int]
    n: int = 0
    hits: int = 0
    coverage: float = 0.0

    @property
    def mean(self) -> float:
        return self.hits / self.n if self.n else 0.0


def kl_bernoulli(p: FloatArray, q: FloatArray) -> FloatArray:
    """KL divergence between Bernoulli(p) and Bernoulli(q), elementwise."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    q = np.clip(q, 1e-12, 1 - 1e-12)
    return np.asarray(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), dtype=np.float64)


def kl_bounds(mean: FloatArray, level: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The lowest and highest ``q`` with ``KL(mean, q) <= level`` (bisection, 30 halvings)."""
    mean = np.asarray(mean, dtype=np.float64)
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), mean.shape)
    lo_in, lo_out = mean.copy(), np.zeros_like(mean)
    hi_in, hi_out = mean.copy(), np.ones_like(mean)
    for _ in range(30):
        mid = (lo_in + lo_out) / 2
        inside = kl_bernoulli(mean, mid) <= level
        lo_in, lo_out = np.where(inside, mid, lo_in), np.where(inside, lo_out, mid)
        mid = (hi_in + hi_out) / 2
        inside = kl_bernoulli(mean, mid) <= level
        hi_in, hi_out = np.where(inside, mid, hi_in), np.where(inside, hi_out, mid)
    return lo_in, hi_in


class Anchors:
    """Anchor rules with precision, its confidence interval, and coverage, per row."""

    name = "anchors"

    def explain(self, task: ExplainTask) -> Attributions:
        """Find an anchor for each row's predicted class.

        Raises:
            InvalidRequest: No background, or a regression model (``method_not_applicable``).
        """
        require_background(task, self.name)
        if task.output_names == ["value"]:
            raise InvalidRequest(
                "anchors explain classifiers; this model is a regression", code="method_not_applicable", field="method"
            )
        with library_failures(self.name):
            scores = np.asarray(task.f(task.X), dtype=np.float64)
            search = _Search(task)
            quality = [{"anchor": search.row(i, x, int(np.argmax(scores[i])))} for i, x in enumerate(task.X)]
        n, d = task.X.shape
        return Attributions(
            base_values=scores.copy(),
            values=np.zeros((n, d, scores.shape[1])),
            output_values=scores,
            quality=quality,
            info={
                "threshold": float(task.params["threshold"]),
                "delta": float(task.params["delta"]),
                "discretizer": "quartiles",
            },
        )


class _Search:
    """The anchor search over one task (the background's bins are computed once)."""

    def __init__(self, task: ExplainTask) -> None:
        self.task = task
        self.f: ModelFn = task.f
        self.background = np.asarray(task.background, dtype=np.float64)
        self.categorical = set(task.categorical)
        d = self.background.shape[1]
        self.edges = [
            np.unique(np.quantile(self.background[:, j], [0.25, 0.5, 0.75])) if j not in self.categorical else None
            for j in range(d)
        ]
        p = task.params
        self.threshold = float(p["threshold"])
        self.delta = float(p["delta"])
        self.epsilon = float(p["epsilon"])
        self.beam = int(p["beam_size"])
        self.batch = int(p["batch_size"])
        self.budget = int(p["max_samples"])
        self.max_size = int(p.get("max_anchor_size") or d)
        self.used = 0
        """Model rows evaluated for the current row (its budget is ``max_samples``)."""

    def _bin(self, j: int, values: FloatArray) -> FloatArray:
        edges = self.edges[j]
        assert edges is not None
        return np.searchsorted(edges, values, side="left").astype(np.float64)

    def row(self, i: int, x: FloatArray, label: int) -> dict[str, Any]:
        """The anchor of row ``x`` for class ``label``, as JSON."""
        rng = np.random.default_rng([self.task.seed, i])
        d = len(x)
        # Which background rows meet each of the row's conditions (its quartile bin, or its category).
        meets = np.column_stack(
            [
                self.background[:, j] == x[j]
                if j in self.categorical
                else self._bin(j, self.background[:, j]) == self._bin(j, x[j : j + 1])[0]
                for j in range(d)
            ]
        )
        self.used = 0
        arms: dict[frozenset[int], _Arm] = {}

        def arm(conditions: frozenset[int]) -> _Arm:
            if conditions not in arms:
                covered = np.all(meets[:, sorted(conditions)], axis=1) if conditions else np.ones(len(meets), bool)
                arms[conditions] = _Arm(conditions, coverage=float(covered.mean()))
            return arms[conditions]

        def pull(a: _Arm, n: int) -> None:
            n = max(0, min(n, self.budget - self.used))
            if n == 0:
                return
            Z = self.background[rng.integers(0, len(self.background), size=n)].copy()
            for j in a.conditions:
                pool = self.background[meets[:, j], j]
                Z[:, j] = rng.choice(pool, size=n) if len(pool) else x[j]
            a.n += n
            a.hits += int(np.sum(np.argmax(self.f(Z), axis=1) == label))
            self.used += n

        def bounds(chosen: list[_Arm], level: float) -> tuple[FloatArray, FloatArray]:
            means = np.array([a.mean for a in chosen])
            counts = np.array([max(a.n, 1) for a in chosen], dtype=np.float64)
            return kl_bounds(means, level / counts)

        def confirm(c: _Arm, size: int) -> bool:
            """Sample ``c`` until its bounds clear the threshold or fall short of it; whether it clears it."""
            while self.used < self.budget:
                low, high = bounds([c], self._beta(1, size))
                if low[0] >= self.threshold or high[0] < self.threshold:
                    break
                pull(c, self.batch)
            return bool(bounds([c], self._beta(1, size))[0][0] >= self.threshold)

        empty = arm(frozenset())
        pull(empty, self.batch)
        if confirm(empty, 1):
            return self._json(empty, x, label, True, bounds)
        best, beam = empty, [empty]
        for size in range(1, self.max_size + 1):
            candidates = [arm(a.conditions | {j}) for a in beam for j in range(d) if j not in a.conditions]
            candidates = list({c.conditions: c for c in candidates}.values())
            if not candidates or self.used >= self.budget:
                break
            for c in candidates:
                if c.n == 0:
                    pull(c, self.batch)
            beam = self._lucb(candidates, pull, bounds, size)
            valid = [c for c in beam if confirm(c, size)]
            best = max([best, *beam], key=lambda c: (c.mean, c.coverage))
            if valid:
                return self._json(max(valid, key=lambda c: (c.coverage, c.mean)), x, label, True, bounds)
        # The budget ran out (or every feature is in the rule) before any anchor was precise enough.
        return self._json(best, x, label, False, bounds)

    def _lucb(self, arms: list[_Arm], pull: Any, bounds: Any, size: int) -> list[_Arm]:
        """KL-LUCB: the ``beam`` arms of highest precision, sampling the most ambiguous pair each round."""
        top = min(self.beam, len(arms))
        t = 1
        while self.used < self.budget:
            means = np.array([a.mean for a in arms])
            order = np.argsort(-means, kind="stable")
            chosen, rest = order[:top], order[top:]
            if rest.size == 0:
                break
            low, high = bounds(arms, self._beta(len(arms), t))
            ut = rest[np.argmax(high[rest])]
            lt = chosen[np.argmin(low[chosen])]
            if high[ut] - low[lt] <= self.epsilon:
                break
            pull(arms[ut], self.batch)
            pull(arms[lt], self.batch)
            t += 1
        means = np.array([a.mean for a in arms])
        return [arms[k] for k in np.argsort(-means, kind="stable")[:top]]

    def _beta(self, n_arms: int, t: int) -> float:
        """The paper's exploration rate for ``n_arms`` arms at round ``t``."""
        temp = float(np.log(_K * n_arms * t**_ALPHA / self.delta))
        return temp + float(np.log(temp))

    def _json(self, found: _Arm, x: FloatArray, label: int, met: bool, bounds: Any) -> dict[str, Any]:
        # The reported interval is a fresh, plain two-sided KL interval at 1 - delta over this anchor's samples.
        low, high = bounds([found], float(np.log(2 / self.delta)))
        names = self.task.feature_names
        conditions = [self._condition(j, x) for j in sorted(found.conditions)]
        return {
            "label": self.task.output_names[label],
            "rule": " AND ".join(c["text"] for c in conditions) if conditions else "(always)",
            "conditions": conditions,
            "precision": found.mean,
            "precision_bounds": [float(low[0]), float(high[0])],
            "confidence": 1 - self.delta,
            "coverage": found.coverage,
            "threshold_met": met,
            "samples": found.n,
            "features": [names[j] for j in sorted(found.conditions)],
        }

    def _condition(self, j: int, x: FloatArray) -> dict[str, Any]:
        """Condition ``j`` of row ``x``: its category, or its quartile bin as bounds and text."""
        name = self.task.feature_names[j]
        if j in self.categorical:
            code = self.task.params.get("categories", {}).get(name)
            value: Any = code[int(x[j])] if code else float(x[j])
            return {"feature": name, "op": "==", "value": value, "text": f"{name} = {value}"}
        edges = self.edges[j]
        assert edges is not None
        b = int(self._bin(j, x[j : j + 1])[0])
        low = float(edges[b - 1]) if b > 0 else None
        high = float(edges[b]) if b < len(edges) else None
        if low is None and high is not None:
            text = f"{name} <= {high:.6g}"
        elif high is None and low is not None:
            text = f"{name} > {low:.6g}"
        elif low is not None and high is not None:
            text = f"{low:.6g} < {name} <= {high:.6g}"
        else:
            text = f"{name} is any value"
        return {"feature": name, "op": "in", "low": low, "high": high, "text": text}

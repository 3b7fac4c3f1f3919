"""Ground truth: interventional Shapley values by brute force over every coalition."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np


def brute_force_shapley(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, background: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return (base (k,), phi (d, k)) with v(S) = mean_b f(x_S, b_rest)."""
    d = len(x)
    values: dict[tuple[int, ...], np.ndarray] = {}
    for size in range(d + 1):
        for subset in itertools.combinations(range(d), size):
            rows = background.copy()
            rows[:, list(subset)] = x[list(subset)]
            values[subset] = f(rows).mean(axis=0)
    phi = np.zeros((d, values[()].shape[0]))
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for size in range(d):
            weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for subset in itertools.combinations(others, size):
                with_i = tuple(sorted(subset + (i,)))
                phi[i] += weight * (values[with_i] - values[subset])
    return values[()], phi

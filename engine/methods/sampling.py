"""Helpers shared by the sampling explainers (``kernel_shap``, ``permutation``).

Both report a ``std_error`` per attribution; it is read as a normal standard
error (``±1.96 std_error`` ≈ 95 %), so an error estimated from few degrees of
freedom is widened by :func:`t_widening`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import stats

from engine.arrays import FloatArray

CONVERGED_RELATIVE_SE = 0.01
"""A row has converged when every std_error is at most this fraction of the output's range."""


def derived_seed(seed: int, stream: int) -> int:
    """Return the numpy seed of one stream; independent streams for distinct ``(seed, stream)``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


@lru_cache(maxsize=1024)
def t_widening(dof: int) -> float:
    """``t_{0.975, dof} / z_{0.975}``: widen a standard error estimated with ``dof`` degrees of freedom.

    With it ``±1.96 std_error`` stays a 95 % interval although the error is
    itself estimated (1.21 for 7 degrees of freedom, 1.005 for 130).
    """
    if dof < 1:
        return 1.0
    return float(stats.t.ppf(0.975, dof) / stats.norm.ppf(0.975))


def convergence(
    std_errors: FloatArray, output: FloatArray, background_output: FloatArray, targets: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """Judge each row: converged when its targets' std_errors are small against the output's range.

    Args:
        std_errors: ``(n, d, k)``.
        output: ``(n, k)`` model output of the rows.
        background_output: ``(m, k)`` model output of the background.
        targets: The explained output columns of each row.

    Returns:
        One ``{"converged", "max_std_error"}`` dict per row.
    """
    low, high = background_output.min(axis=0), background_output.max(axis=0)
    quality: list[dict[str, Any]] = []
    for i, cols in enumerate(targets):
        cols = list(cols) or list(range(output.shape[1]))
        scale = float(np.max(np.maximum(high[cols], output[i, cols]) - np.minimum(low[cols], output[i, cols])))
        worst = float(std_errors[i][:, cols].max()) if std_errors.shape[1] else 0.0
        quality.append({"converged": worst <= CONVERGED_RELATIVE_SE * scale, "max_std_error": worst})
    return quality

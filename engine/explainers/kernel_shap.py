"""Kernel SHAP (``shap.KernelExplainer``) with an honest standard error.

Error estimate: the sample budget ``nsamples`` is split into ``repeats``
independent Kernel SHAP estimates, each from its own derived seed. The answer
is their mean, and ``std_error`` is the standard error of that mean,
``s / sqrt(R)``, widened by ``t_{0.975, R-1} / z_{0.975}`` because ``s`` itself
comes from only ``R`` estimates: with that factor ``±1.96 std_error`` is a
95 % interval, as a reader of a normal standard error expects (for R = 8 the
factor is 1.21; for R = 2 it is 6.5). Every estimate is exactly additive
(KernelExplainer constrains the regression), so their mean is too.

When the budget covers every coalition (``nsamples ≥ 2^p − 2`` for the ``p``
features that differ from the background), KernelExplainer's regression
would recover the exact Shapley values; they are computed directly by
enumeration instead (same values, bounded memory) and ``std_error`` is 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import shap
from scipy import stats

from engine.errors import InvalidRequest
from engine.explainers import library_failures, require_background
from engine.explainers.base import Attributions, ExplainTask, FloatArray
from engine.explainers.exact import shapley_values

CONVERGED_RELATIVE_SE = 0.01
"""A row has converged when every std_error is at most this fraction of the output's range."""

MAX_SYNTHETIC_ROWS = 500_000
"""KernelExplainer materialises ``nsamples × background`` rows per call; more calls keep memory bounded."""


def derived_seed(seed: int, repeat: int) -> int:
    """Return the numpy seed of one repeat; independent streams for distinct ``(seed, repeat)``."""
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


@dataclass
class RepeatedEstimate:
    """The mean of independent estimates and its standard error.

    Attributes:
        mean: ``(n, d, k)`` mean attribution.
        std_errors: ``(n, d, k)`` t-corrected standard error of ``mean``.
        repeats: Estimates averaged.
        budget_exhausted: The time budget stopped the repeats early.
    """

    mean: FloatArray
    std_errors: FloatArray
    repeats: int
    budget_exhausted: bool


def repeat_within_budget(
    estimate: Callable[[int], FloatArray], repeats: int, time_budget_ms: int | None
) -> RepeatedEstimate:
    """Average ``estimate(r)`` over ``r = 0 … repeats−1``, stopping early at the time budget.

    Args:
        estimate: One independent estimate for repeat ``r``, ``(n, d, k)``.
        repeats: Estimates wanted (at least 2).
        time_budget_ms: Stop before a repeat that would end past this many
            milliseconds; ``None`` runs them all. Two repeats always run,
            since one estimate carries no error.

    Returns:
        The mean, its standard error and how many repeats ran.
    """
    start = time.monotonic()
    results: list[FloatArray] = []
    exhausted = False
    for r in range(repeats):
        if r >= 2 and time_budget_ms is not None:
            elapsed = time.monotonic() - start
            if elapsed * (r + 1) / r > time_budget_ms / 1000:
                exhausted = True
                break
        results.append(estimate(r))
    stack = np.stack(results)
    count = len(results)
    widen = float(stats.t.ppf(0.975, count - 1) / stats.norm.ppf(0.975))
    std_errors = stack.std(axis=0, ddof=1) / np.sqrt(count) * widen
    return RepeatedEstimate(stack.mean(axis=0), std_errors, count, exhausted)


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


def _l1_reg(value: Any) -> bool | str:
    """Translate the ``l1_reg`` parameter into KernelExplainer's argument."""
    if value is False or value is None:
        return False
    if isinstance(value, int):
        return f"num_features({value})"
    return str(value)


class KernelShap:
    """Model-agnostic Shapley estimates with ``std_error`` and ``converged`` per row."""

    name = "kernel_shap"
    needs_background = True

    def explain(self, task: ExplainTask) -> Attributions:
        """Estimate the Shapley values of every row.

        Raises:
            InvalidRequest: No background, or ``nsamples`` too small for
                ``repeats`` independent regressions (``invalid_parameter``).
            ExplanationFailed: shap or the model failed.
        """
        require_background(task, self.name)
        n, d = task.X.shape
        nsamples = int(task.params.get("nsamples", 2048))
        with library_failures(self.name):
            output = np.asarray(task.f(task.X), dtype=np.float64)
            background_output = np.asarray(task.f(task.background), dtype=np.float64)
            values = np.zeros((n, d, output.shape[1]))
            std_errors = np.zeros_like(values)
            varying = np.any(task.background[None, :, :] != task.X[:, None, :], axis=1).sum(axis=1)
            exact = 2.0**varying - 2 <= nsamples
            for i in np.flatnonzero(exact):
                values[i] = shapley_values(task.f, task.X[i], task.background)[1]
            info: dict[str, Any] = {"exact_rows": int(exact.sum())}
            sampled = np.flatnonzero(~exact)
            if sampled.size:
                result = self._sample(task, sampled, nsamples, info)
                values[sampled], std_errors[sampled] = result.mean, result.std_errors
        quality = convergence(std_errors, output, background_output, task.targets)
        for row_quality, row_exact in zip(quality, exact, strict=True):
            row_quality["exact"] = bool(row_exact)
        return Attributions(
            base_values=np.tile(background_output.mean(axis=0), (n, 1)),
            values=values,
            output_values=output,
            std_errors=std_errors,
            quality=quality,
            info=info,
        )

    @staticmethod
    def _sample(task: ExplainTask, rows: npt.NDArray[np.intp], nsamples: int, info: dict[str, Any]) -> RepeatedEstimate:
        """Average independent KernelExplainer estimates of ``task.X[rows]``; record how in ``info``."""
        d = task.X.shape[1]
        repeats = max(int(task.params.get("repeats", 8)), -(-nsamples * len(task.background) // MAX_SYNTHETIC_ROWS))
        per_call = nsamples // repeats
        if per_call < 2 * d:
            raise InvalidRequest(
                f"nsamples={nsamples} split into {repeats} estimates leaves {per_call} coalitions each; "
                f"Kernel SHAP needs at least 2 × {d} features; raise nsamples or lower repeats",
                code="invalid_parameter",
                field="parameters.nsamples",
            )
        l1_reg = _l1_reg(task.params.get("l1_reg", False))
        explainer = shap.KernelExplainer(task.f, task.background)

        def estimate(repeat: int) -> FloatArray:
            phis = []
            for i in rows:
                # KernelExplainer draws its coalitions from numpy's global random state.
                np.random.seed(derived_seed(task.seed, repeat))
                phi = explainer.shap_values(task.X[i : i + 1], nsamples=per_call, l1_reg=l1_reg, silent=True)
                phis.append(np.asarray(phi, dtype=np.float64).reshape(d, -1))
            return np.stack(phis)

        result = repeat_within_budget(estimate, repeats, task.params.get("time_budget_ms"))
        info.update(repeats=result.repeats, samples_per_repeat=per_call)
        if result.budget_exhausted:
            info["time_budget_exhausted"] = True
        if l1_reg is not False:
            info["l1_reg"] = l1_reg
            info["truncation"] = (
                "each estimate keeps its own features, so their mean may keep more; "
                "std_error does not include the bias of dropping features"
            )
        return result

"""Permutation SHAP (``shap.PermutationExplainer``): exactly additive, with a standard error.

``shap.PermutationExplainer`` walks random feature orderings forwards and
backwards (antithetic sampling), so each ordering's attributions telescope to
``f(x) − E f`` exactly, and averages them; ``max_evals`` buys
``P = max_evals // (2p + 1)`` orderings for ``p`` varying features (one model
call each). onnxplain spends exactly those ``P`` orderings per row, the same
as one raw call with the whole ``max_evals``, but split into ``repeats``
groups of nearly equal size, each one ``PermutationExplainer`` call seeded
from ``(seed, group)``: the answer is the ordering-weighted mean of the
groups, i.e. the mean over all ``P`` orderings, and ``std_error`` the
standard error of that mean from the spread between groups, widened by
``t_{0.975, G−1} / z_{0.975}`` for ``G`` groups. Splitting costs no model
evaluation, only shap's per-call overhead (~0.2 ms).

``time_budget_ms`` stops before a group (over every row) that would end past
the budget, always keeping two; the answer then averages fewer orderings.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import shap

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background
from engine.methods.sampling import convergence, derived_seed, t_widening


class Permutation:
    """Model-agnostic Shapley estimates by antithetic permutation sampling."""

    name = "permutation"

    def explain(self, task: ExplainTask) -> Attributions:
        """Estimate the Shapley values of every row.

        Raises:
            InvalidRequest: No background, or ``max_evals`` below two
                forward-and-back passes over every feature (``invalid_parameter``).
            ExplanationFailed: shap or the model failed.
        """
        start = time.monotonic()
        require_background(task, self.name)
        n, d = task.X.shape
        max_evals = int(task.params.get("max_evals", 2048))
        if max_evals < 2 * (2 * d + 1):
            raise InvalidRequest(
                f"max_evals={max_evals} buys fewer than two permutations of {d} features "
                f"(2 × {2 * d + 1} evaluations), which leaves no error estimate; raise max_evals",
                code="invalid_parameter",
                field="parameters.max_evals",
            )
        wanted = int(task.params.get("repeats", 8))
        budget_ms = task.params.get("time_budget_ms")
        with library_failures(self.name):
            output = np.asarray(task.f(task.X), dtype=np.float64)
            background_output = np.asarray(task.f(task.background), dtype=np.float64)
            k = output.shape[1]
            # shap's varying inputs: features not close to every background value; each ordering costs 2p + 1.
            varying = np.array([np.any(~np.isclose(x, task.background), axis=0).sum() for x in task.X], dtype=int)
            orderings = max_evals // (2 * varying + 1)
            groups = np.where(varying > 0, np.minimum(wanted, orderings), 0)
            # Independent keeps every background row (its default subsamples to 100).
            masker = shap.maskers.Independent(task.background, max_samples=len(task.background))
            explainer = shap.PermutationExplainer(task.f, masker, seed=task.seed)
            group_values = np.zeros((int(groups.max(initial=0)), n, d, k))
            group_sizes = np.zeros((len(group_values), n))
            done = 0
            for g in range(len(group_values)):
                if g >= 2 and budget_ms is not None:
                    elapsed = time.monotonic() - start
                    if elapsed * (g + 1) / g > budget_ms / 1000:
                        break
                for i in np.flatnonzero(groups > g):
                    # Group g of a row holds its orderings g, g + G, g + 2G, …
                    size = len(range(g, int(orderings[i]), int(groups[i])))
                    # PermutationExplainer shuffles with numpy's global random state.
                    np.random.seed(derived_seed(task.seed, g))
                    explanation = explainer(task.X[i : i + 1], max_evals=size * (2 * int(varying[i]) + 1), silent=True)
                    group_values[g, i] = np.asarray(explanation.values, dtype=np.float64).reshape(d, k)
                    group_sizes[g, i] = size
                done = g + 1
            values, std_errors = _grouped_mean(group_values[:done], group_sizes[:done])
        per_row = group_sizes[:done].sum(axis=0)[groups > 0]
        # Rows with fewer varying features get more orderings; report the fewest any row got.
        info: dict[str, Any] = {"repeats": done, "orderings": int(per_row.min()) if per_row.size else 0}
        if done < len(group_values):
            info["time_budget_exhausted"] = True
        return Attributions(
            base_values=np.tile(background_output.mean(axis=0), (n, 1)),
            values=values,
            output_values=output,
            std_errors=std_errors,
            quality=convergence(std_errors, output, background_output, task.targets),
            info=info,
        )


def _grouped_mean(values: FloatArray, sizes: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Ordering-weighted mean of group estimates ``(G, n, d, k)`` and its t-widened standard error.

    For a row with ``G ≥ 2`` groups of sizes ``P_g`` (``P`` in all) the
    variance of the mean is estimated by ``G/(G−1) · Σ_g (P_g/P)² (φ_g − φ̄)²``
    (``s²/G`` for equal groups). Rows without groups (nothing varies) get 0.
    """
    total = sizes.sum(axis=0)
    share = np.divide(sizes, total, out=np.zeros_like(sizes), where=total > 0)[:, :, None, None]
    mean = (share * values).sum(axis=0)
    count = (sizes > 0).sum(axis=0)
    spread = (share**2 * (values - mean) ** 2).sum(axis=0)
    factor = np.array([c / (c - 1) * t_widening(c - 1) ** 2 if c >= 2 else 0.0 for c in count])
    return mean, np.sqrt(spread * factor[:, None, None])

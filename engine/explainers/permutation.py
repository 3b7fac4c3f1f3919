"""Permutation SHAP (``shap.PermutationExplainer``): exactly additive, with a standard error.

Each estimate walks random feature orderings forwards and backwards, so its
attributions telescope to ``f(x) − E f`` exactly. The ``max_evals`` budget is
split into ``repeats`` independent estimates and ``std_error`` is the
t-corrected standard error of their mean, as for ``kernel_shap``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shap

from engine.errors import InvalidRequest
from engine.explainers import library_failures, require_background
from engine.explainers.base import Attributions, ExplainTask, FloatArray
from engine.explainers.kernel_shap import convergence, derived_seed, repeat_within_budget


class Permutation:
    """Model-agnostic Shapley estimates by antithetic permutation sampling."""

    name = "permutation"
    needs_background = True

    def explain(self, task: ExplainTask) -> Attributions:
        """Estimate the Shapley values of every row.

        Raises:
            InvalidRequest: No background, or ``max_evals`` below one
                forward-and-back pass per repeat (``invalid_parameter``).
            ExplanationFailed: shap or the model failed.
        """
        require_background(task, self.name)
        n, d = task.X.shape
        repeats = int(task.params.get("repeats", 4))
        per_repeat = int(task.params.get("max_evals", 2048)) // repeats
        if per_repeat < 2 * d + 1:
            raise InvalidRequest(
                f"max_evals split into {repeats} estimates leaves {per_repeat} evaluations each; one "
                f"permutation of {d} features needs {2 * d + 1}; raise max_evals or lower repeats",
                code="invalid_parameter",
                field="parameters.max_evals",
            )
        with library_failures(self.name):
            output = np.asarray(task.f(task.X), dtype=np.float64)
            background_output = np.asarray(task.f(task.background), dtype=np.float64)
            k = output.shape[1]
            # Independent keeps every background row (its default subsamples to 100).
            masker = shap.maskers.Independent(task.background, max_samples=len(task.background))
            explainer = shap.PermutationExplainer(task.f, masker, seed=task.seed)

            def estimate(repeat: int) -> FloatArray:
                rows = []
                for x in task.X:
                    # PermutationExplainer shuffles with numpy's global random state.
                    np.random.seed(derived_seed(task.seed, repeat))
                    explanation = explainer(x[None, :], max_evals=per_repeat, silent=True)
                    rows.append(np.asarray(explanation.values, dtype=np.float64).reshape(d, k))
                return np.stack(rows)

            result = repeat_within_budget(estimate, repeats, task.params.get("time_budget_ms"))
        info: dict[str, Any] = {"repeats": result.repeats, "evals_per_repeat": per_repeat}
        if result.budget_exhausted:
            info["time_budget_exhausted"] = True
        return Attributions(
            base_values=np.tile(background_output.mean(axis=0), (n, 1)),
            values=result.mean,
            output_values=output,
            std_errors=result.std_errors,
            quality=convergence(result.std_errors, output, background_output, task.targets),
            info=info,
        )

"""LIME for tabular models (``lime.lime_tabular.LimeTabularExplainer``).

Mapping onto :class:`Attributions`, per explained target: ``values`` are the
surrogate's weights on their feature columns (0 for features it did not
keep), ``base_values`` its intercept and ``output_values`` its prediction at
the row, so the additivity residual reported is the surrogate's own. The
model's real output, the surrogate's R² (``score``) and intercept go to
``quality``, keyed by output name because one row may explain several
targets. Output columns that are not targets stay 0.

LIME's explainer keeps one random state (shared with its discretizer and
its ridge fitter) that advances between calls. One explainer is built per
task and, before each (row, target), that state is replaced by a fresh
``RandomState(task.seed)`` everywhere it is held, which is exactly the state
of a newly built explainer (building draws no random numbers): the same
seed then gives the same answer whatever was explained before.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from lime.lime_tabular import LimeTabularExplainer

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background


class LimeTabular:
    """A local linear surrogate per row and target, fitted on perturbed samples."""

    name = "lime"

    def explain(self, task: ExplainTask) -> Attributions:
        """Fit LIME's surrogate for each row's targets.

        ``task.params["mode"]`` (set by the caller from the model card) picks
        ``"classification"`` or ``"regression"``; without it a single output
        is taken to be a regression.

        Raises:
            InvalidRequest: No background, or regression asked of a model
                with several outputs.
            ExplanationFailed: lime or the model failed.
        """
        require_background(task, self.name)
        n, d = task.X.shape
        k = len(task.output_names)
        mode = task.params.get("mode") or ("regression" if k == 1 else "classification")
        if mode == "regression" and k != 1:
            raise InvalidRequest(
                f"LIME regression explains one output; this model has {k}",
                code="method_not_applicable",
                field="method",
            )
        num_features = min(int(task.params.get("num_features") or d), d)
        base = np.zeros((n, k))
        values = np.zeros((n, d, k))
        surrogate = np.zeros((n, k))
        quality: list[dict[str, Any]] = []
        with library_failures(self.name), warnings.catch_warnings():
            # LIME warns when a classifier's outputs do not sum to 1 (margins, float32 rounding).
            warnings.simplefilter("ignore")
            model_output = np.asarray(task.f(task.X), dtype=np.float64)
            explainer = LimeTabularExplainer(
                task.background,
                mode=mode,
                feature_names=list(task.feature_names),
                categorical_features=list(task.categorical),
                discretize_continuous=bool(task.params.get("discretize_continuous", True)),
                random_state=task.seed,
            )
            for i, x in enumerate(task.X):
                row: dict[str, dict[str, float]] = {"score": {}, "intercept": {}, "model_output": {}}
                for t in task.targets[i]:
                    intercept, weights, score, local = self._fit(explainer, task, x, t, mode, num_features)
                    base[i, t], values[i, :, t], surrogate[i, t] = intercept, weights, local
                    name = task.output_names[t]
                    row["score"][name] = score
                    row["intercept"][name] = intercept
                    row["model_output"][name] = float(model_output[i, t])
                quality.append(row)
        return Attributions(
            base_values=base,
            values=values,
            output_values=surrogate,
            quality=quality,
            info={"mode": mode, "num_samples": int(task.params.get("num_samples", 5000))},
        )

    @staticmethod
    def _fit(
        explainer: LimeTabularExplainer, task: ExplainTask, x: FloatArray, target: int, mode: str, num_features: int
    ) -> tuple[float, FloatArray, float, float]:
        """Fit one surrogate from a reset random state; return its intercept, weights ``(d,)``, R², local prediction."""
        _reset_random_state(explainer, task.seed)
        # In regression mode LIME files the weights under label 1 (label 0 holds their negation).
        label = 1 if mode == "regression" else target
        explanation = explainer.explain_instance(
            x,
            task.f,
            labels=(target,),
            num_features=num_features,
            num_samples=int(task.params.get("num_samples", 5000)),
        )
        weights = np.zeros(len(x))
        for feature, weight in explanation.local_exp[label]:
            weights[feature] = weight
        local = float(np.asarray(explanation.local_pred).reshape(-1)[0])
        return float(explanation.intercept[label]), weights, float(explanation.score), local


def _reset_random_state(explainer: LimeTabularExplainer, seed: int) -> None:
    """Give the explainer, its discretizer and its ridge fitter one fresh ``RandomState(seed)``, as when built."""
    state = np.random.RandomState(seed)
    explainer.random_state = state
    explainer.base.random_state = state
    if explainer.discretizer is not None:
        explainer.discretizer.random_state = state

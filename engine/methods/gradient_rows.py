"""Integrated gradients and saliency for tabular models that are differentiable (MLPs).

The graph is converted to torch (``engine.methods.gradients.convert``) and
checked against onnxruntime on the background rows before any gradient is
used. The model must take its features as one float tensor in raw feature
space (no one-hot columns, no per-feature inputs): the gradient is then with
respect to the very features the answer names. The plan refuses other models
before a job (``method_not_supported_for_model``).

* ``integrated_gradients`` from the background mean (or zeros): additive, its
  ``base_value`` is onnxruntime at the baseline and Captum's convergence delta
  is reported beside the residual.
* ``saliency``: the signed gradient of each output at the row, not additive.
"""

from __future__ import annotations

import numpy as np

from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background


def _explain(task: ExplainTask, method: str) -> Attributions:
    from engine.methods import gradients

    if task.onnx_model is None or task.output is None:
        raise InvalidRequest(f"{method} needs the model's graph", code="method_not_supported_for_model", field="method")
    baseline_kind = str(task.params.get("baseline", "zeros"))
    if method == "integrated_gradients" and baseline_kind == "background":
        require_background(task, method)
    check = task.background[:32] if task.background.ndim == 2 and len(task.background) else task.X
    converted = gradients.convert(task.onnx_model, task.output, check_inputs=check, reference=task.f)
    baseline = (
        task.background.mean(axis=0)
        if method == "integrated_gradients" and baseline_kind == "background"
        else np.zeros(task.X.shape[1])
    )
    with library_failures(method):
        results = gradients.tabular_gradients(
            converted,
            task.f,
            task.X,
            task.targets,
            method=method,
            baseline=baseline,
            steps=int(task.params.get("steps", 64)),
        )
    n, d = task.X.shape
    scores = np.asarray(task.f(task.X), dtype=np.float64)
    k = scores.shape[1]
    values = np.zeros((n, d, k))
    base = scores.copy()
    quality: list[dict[str, object]] = []
    for i, result in enumerate(results):
        row_quality: dict[str, object] = {}
        for j, t in enumerate(result.targets):
            values[i, :, t] = result.maps[j]
            if result.base_values is not None:
                base[i, t] = result.base_values[j]
        if result.quality:
            names = task.output_names
            # One convergence delta per explained output, keyed by its name (the answer picks its own).
            row_quality["convergence_delta"] = {
                names[t]: q["convergence_delta"] for t, q in zip(result.targets, result.quality, strict=True)
            }
        quality.append(row_quality)
    info: dict[str, object] = {"conversion": converted.facts()}
    if method == "integrated_gradients":
        info.update(baseline=baseline_kind, steps=int(task.params.get("steps", 64)))
    return Attributions(base, values, scores, quality=quality, info=info, additive=method == "integrated_gradients")


class RowIntegratedGradients:
    """Integrated gradients of a differentiable tabular model, from the background mean or zeros."""

    name = "integrated_gradients"

    def explain(self, task: ExplainTask) -> Attributions:
        """Explain every row for its targets; attributions add up to output minus the baseline's output."""
        return _explain(task, self.name)


class RowSaliency:
    """The signed gradient of each explained output at each row."""

    name = "saliency"

    def explain(self, task: ExplainTask) -> Attributions:
        """Explain every row by the gradient of its targets (not additive: no base value)."""
        return _explain(task, self.name)

"""Exact interventional Shapley values by enumerating every coalition.

The value of a coalition ``S`` is ``v(S) = mean_b f(x_S ∪ b_S̄)`` over the
background rows ``b``. Features whose value equals every background value
cannot change any ``v(S)``, so only the *varying* features are enumerated and
the others get exactly 0; the cost is ``2^p · m`` model rows for ``p``
varying features and ``m`` background rows.
"""

from __future__ import annotations

from math import factorial

import numpy as np
import numpy.typing as npt

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods import EXACT_MAX_FEATURES
from engine.methods.base import Attributions, ExplainTask, ModelFn, library_failures, require_background

CHUNK_ROWS = 200_000
"""Model rows per ``f`` call: large enough to keep onnxruntime busy, small enough for memory."""


def shapley_values(f: ModelFn, x: FloatArray, background: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Compute the exact interventional Shapley values of one row.

    Args:
        f: Model function, ``(n, d)`` → ``(n, k)``.
        x: The row to explain, ``(d,)``.
        background: Reference rows, ``(m, d)``.

    Returns:
        ``(base, phi)``: the mean output over the background ``(k,)`` and the
        attributions ``(d, k)``, with ``base + phi.sum(0) == f(x)``.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    background = np.asarray(background, dtype=np.float64)
    varying = np.flatnonzero(np.any(background != x, axis=0))
    p = varying.size
    masks = ((np.arange(2**p)[:, None] >> np.arange(p)) & 1).astype(bool)
    values = coalition_values(f, x, background, varying, masks)
    phi = np.zeros((x.size, values.shape[1]))
    phi[varying] = _shapley_weights(masks).T @ values
    return values[0], phi


def coalition_values(
    f: ModelFn, x: FloatArray, background: FloatArray, features: npt.NDArray[np.intp], masks: npt.NDArray[np.bool_]
) -> FloatArray:
    """Evaluate ``v(S)`` for each coalition.

    Args:
        f: Model function.
        x: The row explained, ``(d,)``.
        background: Reference rows, ``(m, d)``.
        features: The feature columns the masks refer to, ``(p,)``.
        masks: ``(c, p)``; ``True`` takes the feature from ``x``.

    Returns:
        ``(c, k)`` mean model output over the background for each coalition.
    """
    m, d = background.shape
    per_chunk = max(1, CHUNK_ROWS // m)
    out: list[FloatArray] = []
    for start in range(0, len(masks), per_chunk):
        chunk = masks[start : start + per_chunk]
        take_x = np.zeros((len(chunk), d), dtype=bool)
        take_x[:, features] = chunk
        rows = np.where(take_x[:, None, :], x, background[None, :, :]).reshape(-1, d)
        y = np.asarray(f(rows), dtype=np.float64)
        out.append(y.reshape(len(chunk), m, -1).mean(axis=1))
    return np.concatenate(out)


def _shapley_weights(masks: npt.NDArray[np.bool_]) -> FloatArray:
    """Return ``C`` with ``phi = C.T @ v``: the Shapley coefficient of every ``v(S)`` for every feature.

    ``phi_i = sum_{S ∌ i} w(|S|) (v(S ∪ i) − v(S))`` with
    ``w(s) = s! (p − s − 1)! / p!``, so ``v(S)`` enters ``phi_i`` with
    ``+w(|S| − 1)`` when ``i ∈ S`` and ``−w(|S|)`` otherwise.
    """
    p = masks.shape[1]
    if p == 0:
        return np.zeros((len(masks), 0))
    w = np.array([factorial(s) * factorial(p - s - 1) / factorial(p) for s in range(p)])
    size = masks.sum(axis=1)
    plus = w[np.clip(size - 1, 0, p - 1)][:, None]
    minus = w[np.clip(size, 0, p - 1)][:, None]
    weights: FloatArray = np.where(masks, plus, -minus)
    return weights


class Exact:
    """Exact Shapley values; cost doubles with every feature, so capped by ``max_features``."""

    name = "exact"

    def explain(self, task: ExplainTask) -> Attributions:
        """Explain every row exactly.

        Raises:
            InvalidRequest: More features than ``max_features``
                (``too_many_features``) or no background.
            ExplanationFailed: The model failed.
        """
        require_background(task, self.name)
        n_features = task.X.shape[1]
        cap = int(task.params.get("max_features", EXACT_MAX_FEATURES))
        if n_features > cap:
            raise InvalidRequest(
                f"exact enumerates 2^{n_features} coalitions; this model has more than "
                f"max_features={cap} features; use kernel_shap or permutation",
                code="too_many_features",
                field="method",
            )
        with library_failures(self.name):
            pairs = [shapley_values(task.f, x, task.background) for x in task.X]
            output = np.asarray(task.f(task.X), dtype=np.float64)
        return Attributions(
            base_values=np.stack([base for base, _ in pairs]),
            values=np.stack([phi for _, phi in pairs]),
            output_values=output,
            quality=[{"converged": True} for _ in pairs],
        )

"""Kernel SHAP by our own estimator (:mod:`engine.methods.kernel_estimator`), with an honest ``std_error``.

One :class:`~engine.methods.kernel_estimator.KernelEstimator` per request
(the background's outputs are computed once), every row explained with the
whole ``nsamples`` budget and the same seed stream, so a row's answer depends
only on the row and the seed. The coalitions of all rows go to the model
together in a few large batches.

Parameters:

* ``nsamples``: the budget, in coalitions evaluated on the whole background
  (``nsamples × background`` model rows per explained row, the request's
  cost). When it covers every coalition (``≥ 2^p − 2`` for ``p`` features
  that differ from the background) the answer is the exact Shapley value
  and ``std_error`` is 0.
* ``background_rows`` (default :data:`DEFAULT_BACKGROUND_ROWS`; ``null``:
  all): each *sampled* coalition is evaluated on that many background rows,
  which buys ``background / background_rows`` times as many coalitions for
  the same model rows; sizes enumerated completely still use every row.
  Their noise is cut by a control variate (``info.control_variates``:
  ``baseline``, each background row's game fitted by an additive one, or
  ``linear`` where the pairs are too few for that fit).
* ``tolerance``: sample in rounds until every ``std_error`` is at most this
  (in the output's units) or the budget is spent; ``quality.converged`` says
  which.
* ``time_budget_ms``: lower ``nsamples`` to what a timed model call says fits.

``shap.KernelExplainer`` stays available as ``kernel_shap_reference``
(:mod:`engine.methods.kernel_shap_reference`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background
from engine.methods.kernel_estimator import KernelEstimator
from engine.methods.sampling import convergence

DEFAULT_BACKGROUND_ROWS = 10
"""Background rows per sampled coalition by default (5–40 measured alike on 30 features, 1–3 and 100 worse)."""

PROBE_ROWS = 4096
"""Model rows timed to fit ``nsamples`` into ``time_budget_ms``."""

SECONDS_PER_COALITION = 20e-6
"""The estimator's own work per coalition (sampling, masking, the solve), 10–40 µs on 2 busy cores (30–100 features)."""


class KernelShap:
    """Model-agnostic Shapley estimates with ``std_error`` and ``converged`` per row."""

    name = "kernel_shap"

    def explain(self, task: ExplainTask) -> Attributions:
        """Estimate the Shapley values of every row.

        Raises:
            InvalidRequest: No background, or ``nsamples`` below two
                coalitions per feature where sampling is needed
                (``invalid_parameter``).
            ExplanationFailed: The model failed.
        """
        start = time.monotonic()
        require_background(task, self.name)
        n, d = task.X.shape
        nsamples = int(task.params.get("nsamples", 2048))
        rows = task.params.get("background_rows", DEFAULT_BACKGROUND_ROWS)
        tolerance = task.params.get("tolerance")
        info: dict[str, Any] = {}
        with library_failures(self.name):
            # Coalition rows as the model reads them: float32 halves their memory traffic (1.1–1.5× faster).
            estimator = KernelEstimator(task.f, task.background, background_rows=rows, dtype=task.row_dtype)
            varying = np.any(task.background[None, :, :] != task.X[:, None, :], axis=1).sum(axis=1)
            sampled = 2.0**varying - 2 > nsamples
            if sampled.any() and nsamples < 2 * d:
                raise InvalidRequest(
                    f"nsamples={nsamples} is below 2 × {d} features; Kernel SHAP's regression needs at least "
                    f"{2 * d} coalitions; raise nsamples",
                    code="invalid_parameter",
                    field="parameters.nsamples",
                )
            budget_ms = task.params.get("time_budget_ms")
            if budget_ms is not None and sampled.any():
                capped = _fit_in_budget(
                    task, estimator, nsamples, int(sampled.sum()), budget_ms / 1000 - (time.monotonic() - start)
                )
                if capped < nsamples:
                    info["time_budget_exhausted"] = True
                nsamples = capped
            estimates = estimator.explain_rows(task.X, nsamples, task.seed, tolerance)
        values = np.stack([e.values for e in estimates])
        std_errors = np.stack([e.std_errors for e in estimates])
        output = np.stack([e.output_value for e in estimates])
        quality = convergence(std_errors, output, estimator.background_output, task.targets)
        for row_quality, estimate in zip(quality, estimates, strict=True):
            row_quality["exact"] = estimate.complete
            if tolerance is not None:
                row_quality["converged"] = bool(estimate.converged)
                row_quality["rounds"] = estimate.rounds
        info.update(
            nsamples=nsamples,
            background_rows=estimator.background_rows,
            exact_rows=int(sum(e.complete for e in estimates)),
            coalitions=int(max(e.coalitions for e in estimates)),
            control_variates=sorted({e.control for e in estimates if e.control is not None}),
            std_error="linearised stratified jackknife over the sampled coalition pairs",
        )
        return Attributions(
            base_values=np.tile(estimator.base_value, (n, 1)),
            values=values,
            output_values=output,
            std_errors=std_errors,
            quality=quality,
            info=info,
        )


def _fit_in_budget(task: ExplainTask, estimator: KernelEstimator, nsamples: int, rows: int, seconds: float) -> int:
    """Lower ``nsamples`` so that ``rows`` sampled rows should take about ``seconds``.

    One whole-background coalition costs the model time of ``background``
    rows (timed on :data:`PROBE_ROWS` rows of copies of the background) plus
    :data:`SECONDS_PER_COALITION` for each of the ``background /
    background_rows`` cheaper coalitions it buys. Never below ``2 × features``
    (nor the parameter's minimum of 16).
    """
    m, d = (int(size) for size in task.background.shape)
    copies = max(1, PROBE_ROWS // m)
    tic = time.monotonic()
    task.f(np.tile(task.background, (copies, 1)))
    probe = time.monotonic() - tic
    per_coalition = probe / copies + SECONDS_PER_COALITION * m / estimator.background_rows
    affordable = int(max(seconds - probe, 0.0) / (rows * per_coalition))
    return max(min(nsamples, max(16, 2 * d)), min(nsamples, affordable))

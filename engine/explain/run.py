"""Run an explanation: a plan and its rows through the method and the model, into a typed result.

A worker calls :func:`run_explanation` and returns ``.to_json()`` as the job's result; an audit chunk reads the
:class:`~engine.explain.result.Explanation`'s arrays directly.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from collections.abc import Callable

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest, JobCanceled
from engine.explain.plan import ExplainRequest
from engine.explain.result import BackgroundUse, Explanation
from engine.methods import get_explainer
from engine.methods.base import ExplainTask
from engine.models.store import ModelRegistry
from engine.serving import Predictor


def summarize_background(background: FloatArray, rows: int) -> FloatArray:
    """Keep at most ``rows`` background rows (a fixed-seed sample, so answers stay reproducible)."""
    if len(background) <= rows:
        return background
    keep = np.sort(np.random.default_rng(0).choice(len(background), size=rows, replace=False))
    return background[keep]


def run_explanation(
    request: ExplainRequest,
    registry: ModelRegistry,
    predictor: Predictor,
    *,
    should_stop: Callable[[], bool] = lambda: False,
) -> Explanation:
    """Explain the request's rows.

    Args:
        request: The validated request.
        registry: The model store.
        predictor: Warm sessions of this process.
        should_stop: Polled between model evaluations; ``True`` cancels.

    Raises:
        JobCanceled: ``should_stop`` said so.
        InvalidRequest, ExplanationFailed: From the method or the model.
    """
    started = time.perf_counter()
    plan = request.plan
    model = registry.get(plan.model, plan.version)
    if model.sha256 != plan.sha256:
        raise InvalidRequest("the model version changed since the request was made", code="model_changed")
    session = predictor.session(model, plan.variant)
    X = np.asarray(request.rows, dtype=np.float64)
    full_background = registry.background(model)
    background = summarize_background(full_background, predictor.settings.background_summary_rows)

    def f(rows: FloatArray) -> FloatArray:
        if should_stop():
            raise JobCanceled("the job was canceled")
        return session.scores(np.asarray(rows, dtype=np.float64).reshape(-1, X.shape[1]))

    scores = f(X)
    names = model.card.output_names
    if model.card.task == "regression":
        targets = [[0] for _ in range(len(X))]
    elif plan.targets:
        targets = [[names.index(t) for t in plan.targets] for _ in range(len(X))]
    else:
        targets = [[int(i)] for i in np.argmax(scores, axis=1)]
    params = dict(plan.parameters)
    if plan.method == "lime":
        params["mode"] = model.card.task
    task = ExplainTask(
        f=f,
        X=X,
        background=background,
        feature_names=model.card.feature_names,
        output_names=names,
        targets=targets,
        params=params,
        seed=int(plan.parameters.get("seed", 0)),
        categorical=model.card.categorical,
        onnx_model=model.model_path.read_bytes() if plan.method in ("tree_shap", "linear") else None,
    )
    result = get_explainer(plan.method).explain(task)
    return Explanation(
        plan=plan,
        model=model,
        X=X,
        scores=scores,
        targets=targets,
        attributions=result,
        background=BackgroundUse(
            rows=len(background),
            of=len(full_background),
            sha256=_digest(background) if len(background) else model.background_sha256,
            constant_features=[model.card.feature_names[j] for j in np.flatnonzero(np.ptp(background, axis=0) == 0)],
        ),
        provenance={
            **_versions(),
            "provider": session.provider,
            "seed": task.seed,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )


def _digest(background: FloatArray) -> str:
    return hashlib.sha256(np.ascontiguousarray(background).tobytes()).hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for name in ("onnxplain", "onnxruntime", "shap", "lime", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out

"""One explanation request, from validated JSON to attribution JSON.

The API calls :func:`build_request` (validation only: no shap, no model
evaluation) and enqueues the payload; a worker calls :func:`run_explanation`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest, JobCanceled
from engine.methods import EXPLAINERS, choose_auto, get_explainer, validate_params
from engine.methods.base import Attributions, ExplainTask
from engine.models.rows import parse_instances, row_values
from engine.models.store import ModelRegistry, ModelVersion
from engine.serving import Predictor, format_predictions
from engine.settings import Settings


@dataclass(frozen=True)
class ExplainRequest:
    """A validated explanation request, as carried in a job payload (plain JSON)."""

    model: str
    version: int
    sha256: str
    variant: str
    rows: list[list[float]]
    method: str
    method_reason: str | None
    parameters: dict[str, Any]
    targets: list[str] | None

    def to_payload(self) -> dict[str, Any]:
        """Return the request as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ExplainRequest:
        """Rebuild a request from :meth:`to_payload` output."""
        return cls(**payload)


def build_request(body: dict[str, Any], model: ModelVersion, settings: Settings, variant: str) -> ExplainRequest:
    """Validate an explain request body against the model (no model evaluation).

    Raises:
        InvalidRequest: Bad rows, method, parameters or targets; or no
            background data for a method that needs it.
    """
    X = parse_instances(body.get("instances"), model.card, max_rows=settings.max_explain_rows)
    method = body.get("method", "auto")
    if not isinstance(method, str) or (method != "auto" and method not in EXPLAINERS):
        raise InvalidRequest(
            f"method must be 'auto' or one of {sorted(EXPLAINERS)}", code="unknown_method", field="method"
        )
    reason = None
    if method == "auto":
        method, reason = _choose(model, settings)
    raw_params = body.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise InvalidRequest("parameters must be an object", code="invalid_parameter", field="parameters")
    params = validate_params(method, raw_params)
    if model.background_rows == 0:
        raise InvalidRequest(
            f"model {model.name!r} v{model.version} has no background data, which {method} needs; "
            "register it with a 'background' part",
            code="background_required",
            field="method",
        )
    d = len(model.card.features)
    if method in SAMPLING_METHODS and d > settings.max_explain_features:
        raise InvalidRequest(
            f"{method} explains at most {settings.max_explain_features} features; the model has {d}",
            code="too_many_features",
            field="method",
        )
    background_rows = min(model.background_rows, settings.background_summary_rows)
    cost = estimate_evaluations(method, params, len(X), background_rows, d)
    if cost > settings.max_model_evaluations:
        raise InvalidRequest(
            f"this request would cost about {cost:,} model evaluations, over the limit of "
            f"{settings.max_model_evaluations:,}; send fewer rows, lower the sample budget, or submit an audit",
            code="too_expensive",
            field="parameters",
        )
    targets = body.get("targets")
    if targets is not None:
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise InvalidRequest("targets must be a non-empty list of names", code="invalid_parameter", field="targets")
        known = model.card.output_names
        for i, target in enumerate(targets):
            if target not in known:
                raise InvalidRequest(
                    f"{target!r} is not an output of the model: {known}", code="unknown_target", field=f"targets[{i}]"
                )
    return ExplainRequest(
        model=model.name,
        version=model.version,
        sha256=model.sha256,
        variant=variant,
        rows=X.tolist(),
        method=method,
        method_reason=reason,
        parameters=params,
        targets=targets,
    )


SAMPLING_METHODS = frozenset({"kernel_shap", "permutation", "lime"})


def estimate_evaluations(method: str, params: dict[str, Any], rows: int, background_rows: int, d: int) -> int:
    """Estimate the model rows a request evaluates (rows × samples × background).

    Args:
        method: The resolved method.
        params: Its validated parameters.
        rows: Rows to explain.
        background_rows: Background rows the method will use.
        d: Number of features.

    Returns:
        The estimated number of rows passed through the model.
    """
    background_rows = max(background_rows, 1)
    per_row = {
        "kernel_shap": int(params.get("nsamples", 2048)) * background_rows,
        "permutation": int(params.get("max_evals", 2048)) * background_rows,
        "exact": (2**d) * background_rows,
        "lime": int(params.get("num_samples", 5000)),
    }.get(method, background_rows)
    return int(rows * per_row)


def _choose(model: ModelVersion, settings: Settings) -> tuple[str, str]:
    is_tree, is_linear = _graph_kind(model.sha256, model.model_path)
    return choose_auto(len(model.card.features), is_tree, is_linear, settings.exact_max_features)


@functools.lru_cache(maxsize=64)
def _graph_kind(sha256: str, path: Path) -> tuple[bool, bool]:
    """Whether a model is a tree ensemble / linear; parsed once per model content, not per request."""
    from engine.methods.linear import is_linear
    from engine.methods.trees.model import is_tree_ensemble

    onnx_bytes = path.read_bytes()
    return is_tree_ensemble(onnx_bytes), is_linear(onnx_bytes)


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
) -> dict[str, Any]:
    """Explain the request's rows and return the attribution JSON.

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
    model = registry.get(request.model, request.version)
    if model.sha256 != request.sha256:
        raise InvalidRequest("the model version changed since the request was made", code="model_changed")
    session = predictor.session(model, request.variant)
    X = np.asarray(request.rows, dtype=np.float64)
    full_background = registry.background(model)
    background = summarize_background(full_background, predictor.settings.background_summary_rows)

    def f(rows: FloatArray) -> FloatArray:
        if should_stop():
            raise JobCanceled("the job was canceled")
        return session.scores(np.asarray(rows, dtype=np.float64).reshape(-1, X.shape[1]))

    scores = f(X)
    predictions = format_predictions(scores, model.card.class_names)
    names = model.card.output_names
    if model.card.task == "regression":
        targets = [[0] for _ in range(len(X))]
    elif request.targets:
        targets = [[names.index(t) for t in request.targets] for _ in range(len(X))]
    else:
        targets = [[int(i)] for i in np.argmax(scores, axis=1)]
    params = dict(request.parameters)
    if request.method == "lime":
        params["mode"] = model.card.task
    task = ExplainTask(
        f=f,
        X=X,
        background=background,
        feature_names=model.card.feature_names,
        output_names=names,
        targets=targets,
        params=params,
        seed=int(request.parameters.get("seed", 0)),
        categorical=model.card.categorical,
        onnx_model=model.model_path.read_bytes() if request.method in ("tree_shap", "linear") else None,
    )
    result = get_explainer(request.method).explain(task)
    explanations = [
        {"prediction": predictions[i], "targets": [_target(result, i, t, X[i], model) for t in targets[i]]}
        for i in range(len(X))
    ]
    output_space = result.info.get("output_space", "probability")
    kind = "value" if model.card.task == "regression" and output_space != "margin" else output_space
    return {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256, "variant": request.variant},
        "method": request.method,
        **({"method_reason": request.method_reason} if request.method_reason else {}),
        "parameters": {
            **request.parameters,
            **{k: v for k, v in result.info.items() if k != "output_space"},
            "background": {
                "rows": len(background),
                "of": len(full_background),
                "summary": "sample" if len(background) < len(full_background) else "all",
                "sha256": _digest(background) if len(background) else model.background_sha256,
                "constant_features": [
                    model.card.feature_names[j] for j in np.flatnonzero(np.ptp(background, axis=0) == 0)
                ],
            },
        },
        "output": {"kind": kind, "targets": request.targets or (["value"] if kind == "value" else ["predicted"])},
        "explanations": explanations,
        "provenance": {
            **_versions(),
            "provider": session.provider,
            "seed": task.seed,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    }


def _target(result: Attributions, i: int, k: int, x: FloatArray, model: ModelVersion) -> dict[str, Any]:
    values = result.values[i, :, k]
    base = float(result.base_values[i, k])
    output = float(result.output_values[i, k])
    shown = row_values(x, model.card)
    attributions = []
    for j, name in enumerate(model.card.feature_names):
        item: dict[str, Any] = {"feature": name, "value": shown[j], "attribution": float(values[j])}
        if result.std_errors is not None:
            item["std_error"] = float(result.std_errors[i, j, k])
        attributions.append(item)
    name = model.card.output_names[k]
    residual = output - base - float(np.sum(values))
    quality: dict[str, Any] = {"additivity_residual": residual}
    # Local accuracy well past float noise means the answer must not pass as sound.
    if abs(residual) > 1e-3 * max(1.0, abs(output)):
        quality["degraded"] = True
    if result.quality:
        # Per-row quality may hold per-output entries (LIME fits one surrogate per target).
        quality.update({q: v[name] if isinstance(v, dict) and name in v else v for q, v in result.quality[i].items()})
    return {
        "target": name,
        "base_value": base,
        "output_value": output,
        "attributions": attributions,
        "quality": quality,
    }


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

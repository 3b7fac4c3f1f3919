"""Run an explanation: a plan and its rows through the method and the model, into a typed result.

A worker calls :func:`run_explanation` and returns ``.to_json()`` as the job's result; an audit chunk reads the
:class:`~engine.explain.result.Explanation`'s arrays directly.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest, JobCanceled
from engine.explain.plan import ExplainRequest
from engine.explain.result import BackgroundUse, Explanation
from engine.methods import get_explainer
from engine.methods.base import ExplainTask
from engine.models.store import ModelRegistry, ModelVersion
from engine.runtime.sessions import ModelSession, read_scores
from engine.serving import Predictor, format_predictions
from engine.variants.state import variant_dir

_READS_GRAPH = frozenset({"tree_shap", "linear", "integrated_gradients", "saliency"})
"""Tabular methods that read the ONNX graph itself (trees, coefficients, gradients)."""


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
) -> Explanation | PerceptionExplanation:
    """Explain the request's rows (images and texts: :func:`run_perception`).

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
    if model.card.input_kind != "tabular":
        return run_perception(request, model, session, registry.background(model), should_stop, started)
    X = np.asarray(request.rows, dtype=np.float64)
    full_background = registry.background(model)
    background = summarize_background(full_background, predictor.settings.background_summary_rows)

    narrow = session.row_dtype

    def f(rows: FloatArray) -> FloatArray:
        if should_stop():
            raise JobCanceled("the job was canceled")
        rows = np.asarray(rows)
        if rows.dtype != narrow:
            rows = rows.astype(np.float64, copy=False)
        return session.scores(rows.reshape(-1, X.shape[1]))

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
    if plan.method == "anchors":
        # Rules name categories, not their codes.
        params["categories"] = {f.name: list(f.categories) for f in model.card.features if f.categories}
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
        onnx_model=_graph_bytes(model, plan.variant) if plan.method in _READS_GRAPH else None,
        output=model.signature.explained_output,
        row_dtype=narrow,
    )
    result = get_explainer(plan.method, "tabular").explain(task)
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


def _graph_bytes(model: ModelVersion, variant: str) -> bytes:
    """The graph a method reads (linear, tree_shap): the served variant's, so its explanation is of that model."""
    path = model.model_path if variant == "fp32" else variant_dir(model, variant) / "model.onnx"
    return path.read_bytes()


def _digest(background: FloatArray) -> str:
    return hashlib.sha256(np.ascontiguousarray(background).tobytes()).hexdigest()


@functools.cache
def _versions() -> dict[str, str]:
    # Once per process: importlib.metadata parses each package's METADATA file (measured: ~4 ms a request, a
    # third of a small explanation's time in the worker). Callers unpack it, never change it.
    out = {}
    for name in ("onnxplain", "onnxruntime", "shap", "lime", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


@dataclass(frozen=True)
class PerceptionExplanation:
    """The answer for image or text inputs: built as JSON by :mod:`engine.explain.perception` (maps and
    heatmaps are already encoded there); audits do not read it."""

    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The attribution JSON (``openapi.yaml``'s Explanation, with maps or tokens)."""
        return self.body


def run_perception(
    request: ExplainRequest,
    model: ModelVersion,
    session: ModelSession,
    background: FloatArray,
    should_stop: Callable[[], bool],
    started: float,
) -> PerceptionExplanation:
    """Explain images or texts with the plan's method; faithfulness curves on every answer.

    Gradient methods convert the graph to torch once per worker and model, checked against this very
    session on up to 32 background images (or the inputs themselves when there is no background).
    """
    from engine.explain.perception import PerceptionModel, explain_inputs

    plan, card = request.plan, model.card
    output = model.signature.explained_output
    port = model.signature.inputs[0]

    def f(batch: Any) -> FloatArray:
        if should_stop():
            raise JobCanceled("the job was canceled")
        return session.scores(batch)

    images = None
    if card.image is not None:
        from engine.models.image import unpack_images

        assert isinstance(request.rows, dict)  # build_request packs images
        images = unpack_images(request.rows).reshape((-1, *card.image.shape))
        inputs: list[Any] = list(images)
        pictures = background.reshape((-1, *card.image.shape)) if len(background) else None
    else:
        inputs = [str(t) for t in request.rows]
        pictures = None

    encoder = session.encoder

    def reference(x: np.ndarray) -> np.ndarray:
        # Token ids go in as they are; images as the float tensor the graph takes.
        kind = (np.int32 if port.type == "tensor(int32)" else np.int64) if encoder is not None else np.float32
        value = np.asarray(x, dtype=kind)
        (scores,) = session.run({port.name: value}, [output])
        return read_scores(scores, card)

    check: np.ndarray | None = None
    if card.image is not None:
        sample = pictures[:32] if pictures is not None else images
        check = card.image.to_model(np.asarray(sample))
    elif encoder is not None:
        # Texts have no background: the conversion is checked on the very texts explained.
        check = encoder.encode(inputs)[0]
    perceived = PerceptionModel(
        kind=card.input_kind,
        onnx_bytes=model.model_path.read_bytes(),
        output=output,
        output_names=card.output_names,
        f=f,
        image=card.image,
        text=card.text,
        encoder=encoder,
        reference=reference if card.image is not None or encoder is not None else None,
        reference_inputs=check,
        reference_key=plan.variant,
        background=pictures,
    )
    scores = f(images if images is not None else inputs)
    names = card.output_names
    if card.task == "regression":
        targets = [[0] for _ in inputs]
    elif plan.targets:
        targets = [[names.index(t) for t in plan.targets] for _ in inputs]
    else:
        targets = [[int(i)] for i in np.argmax(scores, axis=1)]
    answers, info = explain_inputs(perceived, plan.method, plan.parameters, inputs, targets)
    predictions = format_predictions(scores, card.class_names)
    seed = int(plan.parameters.get("seed", 0))
    body: dict[str, Any] = {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256, "variant": plan.variant},
        "method": plan.method,
        **({"method_reason": plan.method_reason} if plan.method_reason else {}),
        "parameters": {**plan.parameters, **info},
        "output": {
            "kind": "value" if card.task == "regression" else "probability",
            "targets": plan.targets or ["predicted"],
        },
        "explanations": [{"prediction": p, "targets": a} for p, a in zip(predictions, answers, strict=True)],
        "provenance": {
            **_versions(),
            "provider": session.provider,
            "seed": seed,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    }
    return PerceptionExplanation(body)

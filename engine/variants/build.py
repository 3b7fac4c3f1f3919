"""Build one variant: quantize and/or prune, measure its fidelity and speed, gate it, record its state.

Runs in a worker (``JOBS["variant"]``); the API only calls :func:`check_buildable` before queueing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, InvalidRequest, OnnxplainError
from engine.models.card import PRUNED_KINDS
from engine.models.screening import is_single_tensor
from engine.models.store import ModelVersion
from engine.settings import Settings
from engine.variants.prune import DEFAULT_SPARSITY
from engine.variants.state import State, VariantState, gate_of, publish, variant_dir, write_state


def check_buildable(model: ModelVersion, kind: str, sparsity: float | None = None) -> None:
    """Refuse, before any job, a variant that cannot be built for ``model``.

    Args:
        model: The model version.
        kind: A checked variant kind.
        sparsity: The pruning sparsity asked for (pruned kinds only).

    Raises:
        InvalidRequest: ``variant_unsupported`` (not one numeric input tensor),
            ``nothing_to_quantize`` (no weighted ops), ``nothing_to_prune`` (no layer
            structured pruning can rewire), ``invalid_parameter`` (``sparsity`` out of
            range or given for a kind that does not prune), ``background_required``
            (variants are calibrated and measured on the background).
    """
    from engine.variants.prune import check_sparsity, prune
    from engine.variants.quantize import has_quantizable_ops

    if sparsity is not None:
        if kind not in PRUNED_KINDS:
            raise InvalidRequest(
                f"sparsity applies to {list(PRUNED_KINDS)} only", code="invalid_parameter", field="sparsity"
            )
        check_sparsity(sparsity)

    inputs = model.signature.inputs
    if model.card.input_kind != "tabular":
        # Fidelity and explanation drift are measured on tabular rows; image and text variants are not built yet.
        raise InvalidRequest(
            f"variants are built for tabular models, not {model.card.input_kind} ones",
            code="variant_unsupported",
            field="kind",
        )
    if not is_single_tensor(inputs, model.card.feature_names) or any(
        f.encoding == "one_hot" for f in model.card.features
    ):
        raise InvalidRequest(
            "variants are built for models with one numeric input tensor", code="variant_unsupported", field="kind"
        )
    if not has_quantizable_ops(model.model_path.read_bytes()):
        raise InvalidRequest(
            f"model {model.name!r} has no MatMul, Gemm or Conv weights: quantizing changes nothing",
            code="nothing_to_quantize",
            field="kind",
        )
    if kind.startswith("prune_structured"):
        prune(model.model_path.read_bytes(), "prune_structured", sparsity or DEFAULT_SPARSITY)  # nothing_to_prune
    if model.background_rows < 4:
        raise InvalidRequest(
            "variants are calibrated and measured on the background data; register the model with at least 4 rows",
            code="background_required",
            field="kind",
        )


def build(
    model: ModelVersion, kind: str, background: FloatArray, settings: Settings, sparsity: float | None = None
) -> VariantState:
    """Build, measure and gate one variant; record its state; return the state.

    The fp32 model is never touched: a crash records the variant as
    ``failed``, and a variant below the gate is ``rejected`` and never placed
    where it could be served. A pruned variant's report adds ``pruning`` (see
    :func:`engine.variants.prune.prune`); every report says ``drift_flagged``
    when its explanations drift below ``variant_min_drift_spearman``.

    Args:
        model: The model version.
        kind: A variant kind.
        background: The model's background rows (calibration and held-out measurement).
        settings: Gate, drift threshold and threads.
        sparsity: For pruned kinds (default :data:`~engine.variants.prune.DEFAULT_SPARSITY`).

    Raises:
        OnnxplainError: After recording ``failed``, the error that caused it.
    """
    from engine.variants.fidelity import measure_variant, passes_gate
    from engine.variants.prune import prune
    from engine.variants.quantize import build_variant

    write_state(model, kind, State.BUILDING, error=None)
    try:
        fp32 = model.model_path.read_bytes()
        rows = np.ascontiguousarray(background, dtype=np.float32)
        # Calibrate on half the rows and measure on the other half, so clipping
        # at the calibrated range cannot hide from the fidelity gate.
        calibration, held_out = rows[0::2], rows[1::2]
        pruning = None
        if kind in PRUNED_KINDS:
            method, _, then = kind.partition("+")
            source, pruning = prune(fp32, method, DEFAULT_SPARSITY if sparsity is None else sparsity)
            # The combination quantizes the pruned graph with the same quantizer as int8_static.
            variant = build_variant(source, then, calibration, variant_dir(model, kind)) if then else source
            if then:
                pruning["then"] = then
        else:
            variant = build_variant(fp32, kind, calibration, variant_dir(model, kind))
        report = measure_variant(
            fp32,
            variant,
            held_out,
            task=model.card.task,
            scores=_scores(model),
            explain=_drift_explainer(model, calibration),
            threads=settings.ort_threads,
        )
        if pruning is not None:
            report["pruning"] = pruning
        report |= drift_flag(report, settings.variant_min_drift_spearman)
        ok, why = passes_gate(report, model.card.task, **gate_of(settings))
        if ok:
            publish(model, kind, variant)
        return write_state(model, kind, State.READY if ok else State.REJECTED, report=report, gate=why)
    except OnnxplainError as exc:
        write_state(model, kind, State.FAILED, error=exc.to_dict())
        raise
    except Exception as exc:
        write_state(model, kind, State.FAILED, error={"code": "quantization_failed", "message": str(exc)})
        raise ExplanationFailed(f"building {kind} failed: {exc}", code="quantization_failed") from exc


def drift_flag(report: dict[str, Any], min_spearman: float) -> dict[str, Any]:
    """Return ``drift_flagged`` (and the threshold) for a measured report.

    A variant is flagged when the median Spearman rank correlation of its attributions
    with fp32's (``explanation_drift.spearman_median``; ``spearman_mean`` in reports
    made before the median was kept) is below ``min_spearman``, as the audit's
    compression study flags it over every row; a report without a drift measurement
    is not flagged. The median, not the mean: a few rows whose small attributions
    swap ranks should not flag a variant whose other rows keep their reasons.
    """
    drift = report.get("explanation_drift") or {}
    spearman = drift.get("spearman_median", drift.get("spearman_mean"))
    return {
        # Ranks of d features give correlations on a grid: a median on the threshold meets it.
        "drift_flagged": spearman is not None and float(spearman) < min_spearman - 1e-9,
        "drift_min_spearman": min_spearman,
    }


def _scores(model: ModelVersion) -> Any:
    from engine.runtime.sessions import read_scores

    name = model.signature.explained_output

    def scores(session: Any, rows: Any) -> Any:
        (value,) = session.run([name], {model.signature.inputs[0].name: rows})
        return read_scores(value, model.card)

    return scores


def _drift_explainer(model: ModelVersion, rows: np.ndarray[Any, Any]) -> Any:
    """Attributions of a model's bytes with a fixed method and seed, for the drift report."""
    card = model.card
    return drift_explainer(
        model.model_path.read_bytes(), rows, card.task, card.feature_names, card.output_names, _scores(model)
    )


def drift_explainer(
    fp32_bytes: bytes,
    rows: np.ndarray[Any, Any],
    task: str,
    feature_names: list[str],
    output_names: list[str],
    scores: Any,
) -> Any:
    """Return ``explain(model_bytes, subset) -> (n, d)``: kernel_shap (512 coalitions, seed 0) of each model.

    Both models explain the class fp32 predicts, and the same seed draws the same coalitions, so the
    difference is the variant's, not the sampler's. ``rows[:50]`` is the background; ``scores`` maps a
    session and float32 rows to an ``(n, k)`` score matrix. The benchmark (``bench/variants.py``) uses it too.
    """
    import onnxruntime as ort

    from engine.methods import get_explainer, validate_params
    from engine.methods.base import ExplainTask
    from engine.runtime.sessions import session_options

    background = np.asarray(rows[:50], dtype=np.float64)
    fp32 = ort.InferenceSession(fp32_bytes, session_options(1), providers=["CPUExecutionProvider"])

    def explain(model_bytes: bytes, subset: Any) -> Any:
        session = ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])

        def f(X: FloatArray) -> FloatArray:
            result: FloatArray = scores(session, X.astype(np.float32))
            return result

        X = np.asarray(subset, dtype=np.float64)
        predicted = np.argmax(scores(fp32, X.astype(np.float32)), axis=1)
        targets = [int(t) for t in predicted] if task == "classification" else [0] * len(X)
        params = validate_params("kernel_shap", {"nsamples": 512, "seed": 0})
        explained = ExplainTask(
            f=f,
            X=X,
            background=background,
            feature_names=feature_names,
            output_names=output_names,
            targets=[[t] for t in targets],
            params=params,
            seed=0,
        )
        values = get_explainer("kernel_shap").explain(explained).values
        return values[np.arange(len(X)), :, targets]

    return explain

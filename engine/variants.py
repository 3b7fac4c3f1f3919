"""Quantized variants of a stored model: their state, report, and which one serves.

Each variant lives in ``name/version/variants/KIND/``: ``state.json``
(``building|ready|rejected|failed``, the fidelity report, the error) and,
only once it passed the fidelity gate, ``model.onnx``. A rejected or failed
variant therefore cannot be served, and nothing a variant does touches the
fp32 model.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine.card import VARIANT_KINDS
from engine.errors import ExplanationFailed, InvalidRequest, NotFound, OnnxplainError
from engine.explainers.base import FloatArray
from engine.registry import ModelVersion
from engine.screening import is_single_tensor
from engine.settings import Settings

KINDS = VARIANT_KINDS
ALIASES = {"int8": ("int8_static", "int8_dynamic")}
STATES = ("building", "ready", "rejected", "failed")


def variant_dir(model: ModelVersion, kind: str) -> Path:
    """Return the directory of one variant of ``model``."""
    return model.path / "variants" / kind


def read_state(model: ModelVersion, kind: str) -> dict[str, Any] | None:
    """Return a variant's state document, or ``None`` when it was never requested."""
    path = variant_dir(model, kind) / "state.json"
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def write_state(model: ModelVersion, kind: str, state: str, **fields: Any) -> dict[str, Any]:
    """Record a variant's state atomically (keeping its earlier fields) and return it."""
    directory = variant_dir(model, kind)
    directory.mkdir(parents=True, exist_ok=True)
    document = read_state(model, kind) or {"kind": kind, "created": _now()}
    document.update(fields, state=state, updated=_now())
    tmp = directory / f".state.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, directory / "state.json")
    return document


def publish(model: ModelVersion, kind: str, onnx_bytes: bytes) -> Path:
    """Place a variant's ONNX file so it can be served (call only after the gate passed)."""
    directory = variant_dir(model, kind)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".model.{uuid.uuid4().hex}"
    tmp.write_bytes(onnx_bytes)
    target = directory / "model.onnx"
    os.replace(tmp, target)
    return target


def list_variants(model: ModelVersion) -> list[dict[str, Any]]:
    """Return the state document of every requested variant of ``model``.

    A measured variant says whether its report was made on this kind of CPU
    (``measured_on_this_cpu``); ``fastest`` trusts only those.
    """
    from engine.hardware import host_cpu, same_kind

    found = []
    for kind in KINDS:
        state = read_state(model, kind)
        if state is not None:
            if isinstance(state.get("report"), dict):
                state["measured_on_this_cpu"] = same_kind(state["report"].get("measured_on"), host_cpu())
            found.append(state)
    return found


def check_kind(kind: object) -> str:
    """Validate a requested variant kind.

    Raises:
        InvalidRequest: ``invalid_parameter`` naming ``kind``.
    """
    if kind not in KINDS:
        raise InvalidRequest(f"kind must be one of {list(KINDS)}", code="invalid_parameter", field="kind")
    return str(kind)


def resolve(model: ModelVersion, requested: str, gate: dict[str, float]) -> str:
    """Resolve a requested variant name to a ready variant kind (or ``fp32``).

    ``fastest`` is the ready variant that measured fastest without being
    slower than fp32 on single rows or in batches (else ``fp32``); ``int8``
    is the faster ready int8 variant.

    Raises:
        NotFound: ``variant_not_found`` when the name is unknown or not ready.

    Args:
        model: The model version.
        requested: ``fp32``, ``fastest``, ``int8`` or a kind.
        gate: ``min_top1`` / ``max_norm_error`` of the fidelity gate.
    """
    from engine.fidelity import pick_fastest

    if requested == "fp32":
        return "fp32"
    ready = {s["kind"]: s["report"] for s in list_variants(model) if s["state"] == "ready"}
    if requested == "fastest":
        return pick_fastest(ready, model.card.task, min_top1=gate["min_top1"], max_norm_error=gate["max_norm_error"])
    options = [k for k in ALIASES.get(requested, (requested,)) if k in ready]
    if not options:
        raise NotFound(
            f"model {model.name!r} v{model.version} has no ready variant {requested!r}",
            code="variant_not_found",
            field="variant",
        )
    fastest = pick_fastest(
        {k: ready[k] for k in options},
        model.card.task,
        min_top1=gate["min_top1"],
        max_norm_error=gate["max_norm_error"],
    )
    return fastest if fastest != "fp32" else options[0]


def gate_of(settings: Settings) -> dict[str, float]:
    """Return the fidelity gate's thresholds from the settings."""
    return {"min_top1": settings.variant_min_top1, "max_norm_error": settings.variant_max_norm_error}


def check_buildable(model: ModelVersion, kind: str) -> None:
    """Refuse, before any job, a variant that cannot be built for ``model``.

    Raises:
        InvalidRequest: ``variant_unsupported`` (not one numeric input tensor),
            ``nothing_to_quantize`` (no weighted ops), ``background_required``
            (variants are calibrated and measured on the background).
    """
    from engine.quantize import has_quantizable_ops

    inputs = model.signature.inputs
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
    if model.background_rows < 4:
        raise InvalidRequest(
            "variants are calibrated and measured on the background data; register the model with at least 4 rows",
            code="background_required",
            field="kind",
        )


def build(model: ModelVersion, kind: str, background: FloatArray, settings: Settings) -> dict[str, Any]:
    """Build, measure and gate one variant; record its state; return the state.

    The fp32 model is never touched: a crash records the variant as
    ``failed``, and a variant below the gate is ``rejected`` and never placed
    where it could be served.

    Raises:
        OnnxplainError: After recording ``failed``, the error that caused it.
    """
    from engine.fidelity import measure_variant, passes_gate
    from engine.quantize import build_variant

    write_state(model, kind, "building", error=None)
    try:
        fp32 = model.model_path.read_bytes()
        rows = np.ascontiguousarray(background, dtype=np.float32)
        # Calibrate on half the rows and measure on the other half, so clipping
        # at the calibrated range cannot hide from the fidelity gate.
        calibration, held_out = rows[0::2], rows[1::2]
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
        ok, why = passes_gate(report, model.card.task, **gate_of(settings))
        if ok:
            publish(model, kind, variant)
        return write_state(model, kind, "ready" if ok else "rejected", report=report, gate=why)
    except OnnxplainError as exc:
        write_state(model, kind, "failed", error=exc.to_dict())
        raise
    except Exception as exc:
        write_state(model, kind, "failed", error={"code": "quantization_failed", "message": str(exc)})
        raise ExplanationFailed(f"building {kind} failed: {exc}", code="quantization_failed") from exc


def _scores(model: ModelVersion) -> Any:
    from engine.runtime import read_scores

    name = model.signature.explained_output

    def scores(session: Any, rows: Any) -> Any:
        (value,) = session.run([name], {model.signature.inputs[0].name: rows})
        return read_scores(value, model.card)

    return scores


def _drift_explainer(model: ModelVersion, rows: np.ndarray[Any, Any]) -> Any:
    """Attributions of a model's bytes with a fixed method and seed, for the drift report."""
    import onnxruntime as ort

    from engine.explainers import get_explainer, validate_params
    from engine.explainers.base import ExplainTask
    from engine.runtime import session_options

    background = np.asarray(rows[:50], dtype=np.float64)
    scores = _scores(model)
    fp32 = ort.InferenceSession(str(model.model_path), session_options(1), providers=["CPUExecutionProvider"])

    def explain(model_bytes: bytes, subset: Any) -> Any:
        session = ort.InferenceSession(model_bytes, session_options(1), providers=["CPUExecutionProvider"])

        def f(X: FloatArray) -> FloatArray:
            result: FloatArray = scores(session, X.astype(np.float32))
            return result

        X = np.asarray(subset, dtype=np.float64)
        # Both models explain the class fp32 predicts, so the attributions compare like with like.
        predicted = np.argmax(scores(fp32, X.astype(np.float32)), axis=1)
        targets = [int(t) for t in predicted] if model.card.task == "classification" else [0] * len(X)
        params = validate_params("kernel_shap", {"nsamples": 512, "seed": 0})
        task = ExplainTask(
            f=f,
            X=X,
            background=background,
            feature_names=model.card.feature_names,
            output_names=model.card.output_names,
            targets=[[t] for t in targets],
            params=params,
            seed=0,
        )
        values = get_explainer("kernel_shap").explain(task).values
        return values[np.arange(len(X)), :, targets]

    return explain


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

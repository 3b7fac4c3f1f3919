"""Fidelity of a variant: how much smaller, faster and different it is than fp32.

:func:`measure_variant` runs the fp32 model and a variant side by side on the
same rows and returns a JSON-ready report; :func:`passes_gate` decides
whether the variant may be served, and :func:`pick_fastest` which variant
``fastest`` means. Explanations are measured through a caller-supplied
``explain`` callable, so this module knows nothing of explainers. Both
sessions are timed interleaved, call by call, so a noisy neighbour slows both alike.

Example::

    report = measure_variant(fp32, int8, rows, task="classification")
    ok, why = passes_gate(report, "classification")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from engine.errors import ExplanationFailed, InvalidRequest
from engine.models.card import TASKS
from engine.runtime.hardware import CpuProfile, host_cpu, same_kind
from engine.runtime.sessions import session_options

ScoresFn = Callable[[ort.InferenceSession, NDArray[Any]], NDArray[Any]]
ExplainFn = Callable[[bytes, NDArray[Any]], NDArray[Any]]


def measure_variant(
    fp32_bytes: bytes,
    variant_bytes: bytes,
    rows: NDArray[Any],
    *,
    task: str,
    scores: ScoresFn | None = None,
    explain: ExplainFn | None = None,
    explain_rows: int = 16,
    top_k: int = 3,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
    single_calls: int = 200,
    batch_rows: int = 256,
    batch_repeats: int = 20,
) -> dict[str, Any]:
    """Compare a variant with its fp32 model on ``rows``.

    Args:
        fp32_bytes: The serialized fp32 model.
        variant_bytes: The serialized variant.
        rows: Float32 rows for the model's single tensor input, batch first.
            All are used for agreement; the first ``batch_rows`` for batched
            throughput, the first ``single_calls`` (cycled) for single-row latency.
            A model with a fixed batch size gets exactly that many rows a call.
        task: ``"classification"`` or ``"regression"``.
        scores: Maps a session and rows to an ``(n, k)`` score matrix; by
            default the first floating-point output.
        explain: Maps model bytes and rows to ``(n, d)`` attributions; when
            given, explanation drift is measured on the first ``explain_rows`` rows.
        explain_rows: Rows explained by each model for the drift.
        top_k: Size of the top-feature sets compared for the drift.
        providers: onnxruntime execution providers for both sessions.
        threads: Intra-op threads per session.
        single_calls: Timed single-row calls per model.
        batch_rows: Rows per timed batch.
        batch_repeats: Timed batches per model.

    Returns:
        A JSON-ready dict: ``task``, ``rows``, ``provider``; ``size_bytes``
        (``fp32``, ``variant``, ``ratio``); ``latency`` (per side the median
        ``single_row_ms`` and ``batch_rows_per_s``, and ``speedup`` ratios
        where > 1 means the variant is faster); ``agreement`` (classifiers:
        ``top1``, ``max_abs_score_diff``, ``mean_abs_score_diff``; regressors:
        ``normalised_max_error`` = max|Δ| / fp32 output range, ``max_abs_error``,
        ``mean_abs_error``, ``output_range``); ``explanation_drift`` (``None``
        without ``explain``: Spearman correlation of per-row |attributions| (mean, median, min),
        mean top-k overlap, max |Δattribution| / output range); ``measured_on``
        (this host's CPU kind, int8 features and onnxruntime version, see :mod:`engine.runtime.hardware`).

    Raises:
        InvalidRequest: ``invalid_task`` for an unknown task, ``invalid_rows``
            for an empty batch.
        ExplanationFailed: ``model_load_failed`` when a model does not load,
            ``variant_mismatch`` when scores or attributions differ in shape.
    """
    _check_task(task)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim < 2 or len(rows) == 0:
        raise InvalidRequest(f"need a non-empty batch of rows, got shape {rows.shape}", code="invalid_rows")
    options = session_options(threads)
    try:
        fp32 = ort.InferenceSession(fp32_bytes, options, providers=list(providers))
        variant = ort.InferenceSession(variant_bytes, options, providers=list(providers))
    except Exception as exc:  # onnxruntime's errors are not exported classes
        raise ExplanationFailed(f"a model does not load: {exc}", code="model_load_failed") from exc
    unit = _fixed_batch(fp32)  # exports without a dynamic batch take exactly `unit` rows a call
    if unit:
        rows, batch_rows = rows[: len(rows) // unit * unit], unit
        if not len(rows):
            raise InvalidRequest(f"the model takes batches of {unit} rows; got fewer", code="invalid_rows")
    score = scores or default_scores
    base, other = score(fp32, rows).reshape(len(rows), -1), score(variant, rows).reshape(len(rows), -1)
    if base.shape != other.shape:
        raise ExplanationFailed(f"fp32 scores {base.shape} vs variant {other.shape}", code="variant_mismatch")
    base, other = base.astype(np.float64), other.astype(np.float64)
    spread = float(np.ptp(base)) or 1.0  # a constant output: report absolute differences
    drift = None
    if explain is not None:
        subset = rows[:explain_rows]
        drift = _drift(explain(fp32_bytes, subset), explain(variant_bytes, subset), top_k, spread)
    return {
        "task": task,
        "rows": len(rows),
        "provider": str(variant.get_providers()[0]),
        "size_bytes": {
            "fp32": len(fp32_bytes),
            "variant": len(variant_bytes),
            "ratio": len(variant_bytes) / len(fp32_bytes),
        },
        "latency": _latency(fp32, variant, rows, single_calls, batch_rows, batch_repeats, unit or 1)
        | {"threads": threads},
        "agreement": _agreement(base, other, task, spread),
        "explanation_drift": drift,
        "measured_on": host_cpu().to_dict(),
    }


def passes_gate(
    report: Mapping[str, Any], task: str, min_top1: float = 0.99, max_norm_error: float = 0.02
) -> tuple[bool, str]:
    """Decide whether a measured variant is faithful enough to serve.

    Args:
        report: A :func:`measure_variant` report.
        task: ``"classification"`` (gated on top-1 agreement) or ``"regression"`` (normalised max error).
        min_top1: Least top-1 agreement accepted for classifiers.
        max_norm_error: Largest ``max|Δ| / output range`` accepted for regressors.

    Returns:
        Whether it passes, and why, in words.

    Raises:
        InvalidRequest: ``invalid_task`` for an unknown task.
    """
    _check_task(task)
    agreement = report["agreement"]
    if task == "classification":
        top1 = float(agreement["top1"])
        ok = top1 >= min_top1
        return ok, f"top-1 agreement {top1:.4f} {'>=' if ok else '<'} {min_top1}"
    error = float(agreement["normalised_max_error"])
    ok = error <= max_norm_error
    return ok, f"normalised max error {error:.4f} {'<=' if ok else '>'} {max_norm_error}"


def pick_fastest(
    reports: Mapping[str, Mapping[str, Any]],
    task: str,
    *,
    host: CpuProfile | None = None,
    min_top1: float = 0.99,
    max_norm_error: float = 0.02,
    allow_drift: bool = False,
) -> str:
    """Return the variant ``fastest`` should serve, ``"fp32"`` when none qualifies.

    A variant qualifies when it passes the gate and is not slower than fp32 on single rows nor
    in batches; the best worse-of-the-two speedup wins, so ``fastest`` is never slower than fp32.
    A report measured on another kind of CPU (or onnxruntime) does not qualify: its speed-up and
    agreement need not hold on this one. Nor does a variant whose pruning cannot speed it up
    (``pruning.speeds_up`` false: unstructured zeros run through the same dense kernels, so any
    measured gain is noise), nor, unless ``allow_drift``, one whose report is ``drift_flagged``.

    Args:
        reports: Variant name → its :func:`measure_variant` report.
        task: The model's task.
        host: The CPU that would serve (default: this host).
        min_top1: The gate's least top-1 agreement (see :func:`passes_gate`).
        max_norm_error: The gate's largest normalised error.
        allow_drift: Whether a ``drift_flagged`` variant may be picked.
    """
    host = host or host_cpu()
    best, best_gain = "fp32", 0.0
    for name, report in reports.items():
        if not same_kind(report.get("measured_on"), host):
            continue
        if (report.get("pruning") or {}).get("speeds_up") is False:
            continue
        if report.get("drift_flagged") and not allow_drift:
            continue
        speedup = report["latency"]["speedup"]
        gain = min(float(speedup["single_row"]), float(speedup["batch"]))
        if gain >= 1.0 and gain > best_gain and passes_gate(report, task, min_top1, max_norm_error)[0]:
            best, best_gain = name, gain
    return best


def default_scores(session: ort.InferenceSession, rows: NDArray[Any]) -> NDArray[np.float64]:
    """Return the model's first floating-point output as an ``(n, k)`` matrix.

    skl2onnx classifiers put an int64 ``label`` first and probabilities
    second; ZipMap outputs (lists of ``{class: p}``) are read in class order.
    A model with a fixed batch size is run that many rows at a time.
    """
    step = _fixed_batch(session) or len(rows)
    return np.concatenate([_first_float(session, rows[i : i + step]) for i in range(0, len(rows), step)])


def _first_float(session: ort.InferenceSession, rows: NDArray[Any]) -> NDArray[np.float64]:
    """Run one batch and return its first floating-point output as ``(n, k)``."""
    for value in session.run(None, {session.get_inputs()[0].name: rows}):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return np.asarray([list(d.values()) for d in value], dtype=np.float64)
        if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
            return value.astype(np.float64).reshape(len(rows), -1)
    raise ExplanationFailed("the model has no floating-point output to compare", code="variant_mismatch")


def _fixed_batch(session: ort.InferenceSession) -> int | None:
    """Return the input's fixed batch size, or ``None`` when it is dynamic."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def _latency(
    fp32: ort.InferenceSession,
    variant: ort.InferenceSession,
    rows: NDArray[np.float32],
    single_calls: int,
    batch_rows: int,
    batch_repeats: int,
    unit: int,
) -> dict[str, Any]:
    """Time single-row (``unit``-row, for a fixed batch size) calls and batches, interleaved."""
    name = fp32.get_inputs()[0].name
    batch = rows[:batch_rows]
    sessions = {"fp32": fp32, "variant": variant}
    single: dict[str, list[float]] = {k: [] for k in sessions}
    batched: dict[str, list[float]] = {k: [] for k in sessions}
    for session in sessions.values():  # warm-up: first runs allocate
        session.run(None, {name: batch})
    for i in range(single_calls):
        start = (i * unit) % (len(rows) - unit + 1)
        row = rows[start : start + unit]
        for key, session in sessions.items():
            single[key].append(_timed(session, name, row))
    for _ in range(batch_repeats):
        for key, session in sessions.items():
            batched[key].append(_timed(session, name, batch))
    out: dict[str, Any] = {"batch_rows": len(batch)}
    for key in sessions:
        out[key] = {
            "single_row_ms": float(np.median(single[key])) * 1e3,
            "batch_rows_per_s": len(batch) / float(np.median(batched[key])),
        }
    out["speedup"] = {
        "single_row": out["fp32"]["single_row_ms"] / out["variant"]["single_row_ms"],
        "batch": out["variant"]["batch_rows_per_s"] / out["fp32"]["batch_rows_per_s"],
    }
    return out


def _timed(session: ort.InferenceSession, name: str, feed: NDArray[np.float32]) -> float:
    """Return the wall time of one run, in seconds."""
    start = time.perf_counter()
    session.run(None, {name: feed})
    return time.perf_counter() - start


def _agreement(base: NDArray[np.float64], other: NDArray[np.float64], task: str, spread: float) -> dict[str, Any]:
    """Compare fp32 and variant scores."""
    diff = np.abs(base - other)
    if task == "classification":
        # A single column is the positive class's probability; else the argmax is the label.
        same = (base[:, 0] > 0.5) == (other[:, 0] > 0.5) if base.shape[1] == 1 else base.argmax(1) == other.argmax(1)
        return {
            "top1": float(same.mean()),
            "max_abs_score_diff": float(diff.max()),
            "mean_abs_score_diff": float(diff.mean()),
        }
    return {
        "normalised_max_error": float(diff.max()) / spread,
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "output_range": spread,
    }


def _drift(a: NDArray[Any], b: NDArray[Any], top_k: int, spread: float) -> dict[str, Any]:
    """Compare per-row attributions of the fp32 model (``a``) and the variant (``b``)."""
    from scipy.stats import spearmanr  # only variant builds need scipy

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ExplanationFailed(f"attributions {a.shape} vs {b.shape}; need equal (n, d)", code="variant_mismatch")
    k = min(top_k, a.shape[1])
    ranks, overlaps = [], []
    for x, y in zip(np.abs(a), np.abs(b), strict=True):
        if np.ptp(x) == 0 or np.ptp(y) == 0:  # Spearman is undefined for a constant row
            ranks.append(1.0 if np.ptp(x) == np.ptp(y) else 0.0)
        else:
            ranks.append(float(spearmanr(x, y).statistic))
        top_x, top_y = set(np.argsort(-x, kind="stable")[:k]), set(np.argsort(-y, kind="stable")[:k])
        overlaps.append(len(top_x & top_y) / k)
    return {
        "rows": len(a),
        "spearman_mean": float(np.mean(ranks)),
        "spearman_median": float(np.median(ranks)),
        "spearman_min": float(np.min(ranks)),
        "top_k": k,
        "top_k_overlap_mean": float(np.mean(overlaps)),
        "max_abs_attribution_diff_relative": float(np.abs(a - b).max()) / spread,
    }


def _check_task(task: str) -> None:
    """Reject a task other than classification or regression."""
    if task not in TASKS:
        raise InvalidRequest(f"task must be one of {TASKS}, not {task!r}", code="invalid_task", field="task")

"""Fidelity of quantized variants: the report, the gate and the picker, on real models.

The variants are built by ``engine.variants.quantize`` from the small real models of
``tests.engine.variants.quantize_models``. Latencies are reported by
``measure_variant`` but never asserted here (timings live in ``bench/``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from engine.errors import InvalidRequest
from engine.runtime.hardware import host_cpu, profile_from
from engine.variants.fidelity import measure_variant, passes_gate, pick_fastest
from engine.variants.quantize import QUANTIZED_KINDS, build_variant
from tests.engine.variants import quantize_models as models
from tests.engine.variants.quantize_models import Model


@pytest.fixture(scope="module")
def mlp() -> Model:
    """An MLPClassifier on 10 features (no ai.onnx.ml preprocessing)."""
    return models.mlp()


@pytest.fixture(scope="module")
def pipeline() -> Model:
    """StandardScaler + MLPClassifier on unscaled features: the graph starts with a Scaler."""
    return models.pipeline()


@pytest.fixture(scope="module")
def regressor() -> Model:
    """StandardScaler + MLPRegressor: checks the float output tail of static int8."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = models.tabular(seed=2)
    mlp = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)
    return models.sklearn_onnx(make_pipeline(StandardScaler(), mlp), X, y), X


@pytest.fixture(scope="module")
def wide_range() -> Model:
    """A regressor int8 cannot represent: one huge weight beside ordinary ones."""
    return models.wide_range()


def occlusion(background: np.ndarray, column: int = -1) -> Callable[[bytes, np.ndarray], np.ndarray]:
    """Return an ``explain`` callable: occlusion attributions through onnxruntime.

    Feature j's attribution is ``f(x) - f(x with feature j set to its
    background mean)`` for the score in ``column`` (deterministic, exact
    enough to rank features, and independent of engine.methods).
    """
    means = background.mean(axis=0).astype(np.float32)

    def explain(model_bytes: bytes, rows: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
        n, d = rows.shape
        occluded = np.repeat(rows[:, None, :], d, axis=1)
        occluded[:, np.arange(d), np.arange(d)] = means
        batch = np.concatenate([rows, occluded.reshape(n * d, d)]).astype(np.float32)
        out: np.ndarray = session.run(None, {session.get_inputs()[0].name: batch})[-1]
        scores = out.reshape(len(batch), -1)[:, column]
        attributions: np.ndarray = scores[:n, None] - scores[n:].reshape(n, d)
        return attributions.astype(np.float64)

    return explain


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_static"])
def test_int8_mlp_agrees_with_fp32_at_the_gate(mlp: Model, kind: str, tmp_path: Path) -> None:
    model, X = mlp
    variant = build_variant(model, kind, X[:200], tmp_path)
    report = measure_variant(
        model, variant, X[500:1500], task="classification", explain=occlusion(X[:200]), single_calls=20, batch_repeats=3
    )
    ok, why = passes_gate(report, "classification")
    assert ok, why
    assert report["agreement"]["top1"] >= 0.99
    assert report["explanation_drift"]["spearman_mean"] >= 0.9, report["explanation_drift"]


def test_report_has_every_field(pipeline: Model, tmp_path: Path) -> None:
    model, X = pipeline
    variant = build_variant(model, "int8_static", X[:200], tmp_path)
    report = measure_variant(
        model, variant, X[200:600], task="classification", explain=occlusion(X[:200]), explain_rows=8, top_k=3,
        single_calls=10, batch_repeats=2,
    )  # fmt: skip
    json.dumps(report, allow_nan=False)  # JSON-ready: plain types, finite numbers
    assert set(report) == {
        "task", "rows", "provider", "size_bytes", "latency", "agreement", "explanation_drift", "measured_on",
    }  # fmt: skip
    assert report["measured_on"] == host_cpu().to_dict()
    assert set(report["size_bytes"]) == {"fp32", "variant", "ratio"}
    latency = report["latency"]
    assert set(latency) == {"fp32", "variant", "speedup", "batch_rows", "threads"}
    for side in ("fp32", "variant"):
        assert set(latency[side]) == {"single_row_ms", "batch_rows_per_s"}
        assert latency[side]["single_row_ms"] > 0 and latency[side]["batch_rows_per_s"] > 0
    assert set(latency["speedup"]) == {"single_row", "batch"}
    assert set(report["agreement"]) == {"top1", "max_abs_score_diff", "mean_abs_score_diff"}
    drift = report["explanation_drift"]
    assert set(drift) == {
        "rows", "spearman_mean", "spearman_median", "spearman_min", "top_k", "top_k_overlap_mean",
        "max_abs_attribution_diff_relative",
    }  # fmt: skip
    assert drift["rows"] == 8 and drift["top_k"] == 3
    assert -1.0 <= drift["spearman_min"] <= drift["spearman_mean"] <= 1.0
    assert drift["spearman_min"] <= drift["spearman_median"] <= 1.0
    assert 0.0 <= drift["top_k_overlap_mean"] <= 1.0


def test_static_regressor_keeps_its_output_in_float_and_passes(regressor: Model, tmp_path: Path) -> None:
    model, X = regressor
    variant = build_variant(model, "int8_static", X[:200], tmp_path)
    report = measure_variant(model, variant, X[200:], task="regression", single_calls=10, batch_repeats=2)
    assert set(report["agreement"]) == {"normalised_max_error", "max_abs_error", "mean_abs_error", "output_range"}
    assert report["explanation_drift"] is None
    ok, why = passes_gate(report, "regression")
    assert ok, why


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_static"])
def test_gate_rejects_weights_int8_cannot_represent(wide_range: Model, kind: str, tmp_path: Path) -> None:
    model, X = wide_range
    variant = build_variant(model, kind, X[:100], tmp_path)
    report = measure_variant(model, variant, X, task="regression", single_calls=10, batch_repeats=2)
    ok, why = passes_gate(report, "regression")
    assert not ok
    assert report["agreement"]["normalised_max_error"] > 0.02
    assert "normalised max error" in why


@pytest.mark.parametrize("kind", QUANTIZED_KINDS)
def test_fixed_batch_export_builds_and_is_measured_a_row_at_a_time(kind: str, tmp_path: Path) -> None:
    model = models.export_cnn(dynamic_batch=False)  # input shape [1, 3, 16, 16]
    images = np.random.default_rng(7).normal(size=(20, 3, 16, 16)).astype(np.float32)
    variant = build_variant(model, kind, images[:8], tmp_path)
    report = measure_variant(model, variant, images, task="classification", single_calls=3, batch_repeats=2)
    assert report["latency"]["batch_rows"] == 1 and report["rows"] == 20
    assert report["agreement"]["top1"] >= 0.9


def _report(task: str, single: float, batch: float, top1: float = 1.0, error: float = 0.0) -> dict[str, Any]:
    """A hand-made report with just the fields the gate and the picker read."""
    agreement = {"top1": top1} if task == "classification" else {"normalised_max_error": error}
    speedup = {"single_row": single, "batch": batch}
    return {"agreement": agreement, "latency": {"speedup": speedup}, "measured_on": host_cpu().to_dict()}


def test_fastest_is_never_slower_than_fp32_nor_unfaithful() -> None:
    reports = {
        "int8_dynamic": _report("classification", 1.3, 1.6),
        "int8_static": _report("classification", 0.9, 2.5),  # slower on single rows
        "fp16": _report("classification", 2.0, 2.0, top1=0.95),  # fails the gate
    }
    assert pick_fastest(reports, "classification") == "int8_dynamic"
    assert pick_fastest({"int8_static": reports["int8_static"]}, "classification") == "fp32"
    assert pick_fastest({"fp16": reports["fp16"]}, "classification", min_top1=0.9) == "fp16"
    assert pick_fastest({"int8_dynamic": _report("regression", 1.5, 1.5, error=0.05)}, "regression") == "fp32"
    assert pick_fastest({}, "regression") == "fp32"


def test_fastest_does_not_trust_a_report_from_another_kind_of_cpu() -> None:
    here = host_cpu()
    other = profile_from("aarch64" if here.is_x86 else "x86_64", {"avx2"}, here.onnxruntime)
    older = profile_from(here.machine, set(here.features), "0.0.1")
    fast = _report("classification", 2.0, 2.0)
    assert pick_fastest({"int8_static": fast}, "classification") == "int8_static"
    for measured_on in (other.to_dict(), older.to_dict(), None):
        assert pick_fastest({"int8_static": {**fast, "measured_on": measured_on}}, "classification") == "fp32"
    # Served from the other CPU, the same report is trusted there and not here.
    assert (
        pick_fastest({"int8_static": {**fast, "measured_on": other.to_dict()}}, "classification", host=other) != "fp32"
    )


def test_gate_rejects_an_unknown_task() -> None:
    with pytest.raises(InvalidRequest) as caught:
        passes_gate(_report("classification", 1, 1), "ranking")
    assert caught.value.code == "invalid_task"


def test_fastest_skips_unstructured_pruning_and_drifted_explanations() -> None:
    """Zeros run through dense kernels (any measured gain is noise); drift-flagged variants need leave to be picked."""
    magnitude = {**_report("classification", 1.2, 1.2), "pruning": {"speeds_up": False}}
    structured = {**_report("classification", 1.1, 1.1), "pruning": {"speeds_up": True}}
    drifted = {**_report("classification", 1.5, 1.5), "drift_flagged": True}
    assert pick_fastest({"prune_magnitude": magnitude}, "classification") == "fp32"
    assert pick_fastest({"prune_magnitude": magnitude, "prune_structured": structured}, "classification") == (
        "prune_structured"
    )
    assert pick_fastest({"int8_static": drifted, "prune_structured": structured}, "classification") == (
        "prune_structured"
    )
    assert pick_fastest({"int8_static": drifted}, "classification", allow_drift=True) == "int8_static"

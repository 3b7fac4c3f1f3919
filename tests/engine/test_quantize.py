"""Quantized variants and their fidelity, on real models built in the session.

The models are small but real: skl2onnx MLPs (one behind a StandardScaler,
so the graph starts with an ``ai.onnx.ml`` Scaler), a torch CNN exported
with the TorchScript exporter, a random forest, and a hand-made graph whose
weights no per-tensor int8 scale can represent. Latencies are reported by
``measure_variant`` but never asserted here (timings live in ``bench/``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.quantization
import pytest
from onnx import TensorProto, helper, numpy_helper

from engine.errors import ExplanationFailed, InvalidRequest, ModelRejected
from engine.fidelity import measure_variant, passes_gate, pick_fastest
from engine.quantize import VARIANT_KINDS, build_variant, has_quantizable_ops

Model = tuple[bytes, np.ndarray]
FEATURES = 10


def _tabular(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose target depends on every feature, with distinct strengths.

    Every feature matters, so attribution rankings are meaningful end to end
    (irrelevant features would rank by noise and blur the Spearman check).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, FEATURES)).astype(np.float32)
    weights = np.linspace(0.3, 3.0, FEATURES) * np.where(np.arange(FEATURES) % 2, 1.0, -1.0)
    return X, X @ weights + 0.5 * X[:, 0] * X[:, 1]


def _sklearn(estimator: Any, X: np.ndarray, y: np.ndarray) -> bytes:
    """Fit a scikit-learn estimator and convert it with skl2onnx (plain probability matrix)."""
    from skl2onnx import to_onnx

    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    return bytes(to_onnx(estimator.fit(X, y), X[:1], options=options).SerializeToString())


def _graph(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], input_shape: list[int | None]) -> bytes:
    """A hand-made float graph from ``X`` to ``y``."""
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def mlp() -> Model:
    """An MLPClassifier on 10 features (no ai.onnx.ml preprocessing)."""
    from sklearn.neural_network import MLPClassifier

    X, y = _tabular()
    return _sklearn(MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=400, random_state=0), X, y > 0), X


@pytest.fixture(scope="module")
def pipeline() -> Model:
    """StandardScaler + MLPClassifier on unscaled features: the graph starts with a Scaler."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _tabular(seed=1)
    X = (X * 20 + 50).astype(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0)
    return _sklearn(make_pipeline(StandardScaler(), mlp), X, y > 0), X


@pytest.fixture(scope="module")
def regressor() -> Model:
    """StandardScaler + MLPRegressor: checks the float output tail of static int8."""
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = _tabular(seed=2)
    mlp = MLPRegressor(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)
    return _sklearn(make_pipeline(StandardScaler(), mlp), X, y), X


def _export_cnn(dynamic_batch: bool) -> bytes:
    """A tiny torch CNN on 3x16x16 images, exported by the TorchScript exporter."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 16, 16),),
        buffer,  # type: ignore[arg-type]  # file objects work; the stub says paths
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}} if dynamic_batch else None,
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cnn() -> Model:
    """The tiny CNN with a dynamic batch, and random images."""
    return _export_cnn(dynamic_batch=True), np.random.default_rng(3).normal(size=(64, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def forest() -> Model:
    """A random forest: a TreeEnsemble graph with nothing to quantize."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = _tabular(n=300)
    return _sklearn(RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0), X, y > 0), X


@pytest.fixture(scope="module")
def wide_range() -> Model:
    """A regressor int8 cannot represent: one huge weight beside ordinary ones.

    ``y = (X @ W1) @ W2`` where column 1 of ``W1`` holds a weight of 1e4 that
    ``W2`` then zeroes. A per-tensor int8 scale for ``W1`` (and for its
    output) is ~1e4 / 127, so the ordinary weights that make the prediction
    all round to zero.
    """
    rng = np.random.default_rng(4)
    w1 = np.zeros((FEATURES, 2))
    w1[:, 0] = rng.uniform(0.5, 1.5, FEATURES) * rng.choice([-1, 1], FEATURES)
    w1[0, 1] = 1e4
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])]
    model = _graph(nodes, {"W1": w1, "W2": np.array([[1.0], [0.0]])}, [None, FEATURES])
    return model, rng.normal(size=(400, FEATURES)).astype(np.float32)


def occlusion(background: np.ndarray, column: int = -1) -> Callable[[bytes, np.ndarray], np.ndarray]:
    """Return an ``explain`` callable: occlusion attributions through onnxruntime.

    Feature j's attribution is ``f(x) - f(x with feature j set to its
    background mean)`` for the score in ``column`` (deterministic, exact
    enough to rank features, and independent of engine.explainers).
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


def _ops(model_bytes: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_model_from_string(model_bytes).graph.node}


@pytest.mark.parametrize("kind", VARIANT_KINDS)
@pytest.mark.parametrize("name", ["mlp", "pipeline", "cnn"])
def test_every_kind_builds_and_loads(name: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model, rows = request.getfixturevalue(name)
    variant = build_variant(model, kind, rows[:64], tmp_path)
    session = ort.InferenceSession(variant, providers=["CPUExecutionProvider"])
    base = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    feed = rows[:8]
    got = session.run(None, {session.get_inputs()[0].name: feed})[-1]
    want = base.run(None, {base.get_inputs()[0].name: feed})[-1]
    assert got.shape == want.shape and got.dtype == np.float32  # fp16 keeps float32 I/O
    marker = {"int8_dynamic": "DynamicQuantizeLinear", "int8_static": "QuantizeLinear", "fp16": "Cast"}[kind]
    assert marker in _ops(variant)
    assert list(tmp_path.iterdir()) == []  # the quantizers' scratch files are gone


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
    assert set(report) == {"task", "rows", "provider", "size_bytes", "latency", "agreement", "explanation_drift"}
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
        "rows", "spearman_mean", "spearman_min", "top_k", "top_k_overlap_mean", "max_abs_attribution_diff_relative",
    }  # fmt: skip
    assert drift["rows"] == 8 and drift["top_k"] == 3
    assert -1.0 <= drift["spearman_min"] <= drift["spearman_mean"] <= 1.0
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


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_tree_ensemble_has_nothing_to_quantize(forest: Model, kind: str, tmp_path: Path) -> None:
    model, X = forest
    assert not has_quantizable_ops(model)
    with pytest.raises(InvalidRequest) as caught:
        build_variant(model, kind, X[:50], tmp_path)
    assert caught.value.code == "nothing_to_quantize"


def test_quantizable_ops_are_found(mlp: Model, cnn: Model, wide_range: Model) -> None:
    assert all(has_quantizable_ops(model) for model, _ in (mlp, cnn, wide_range))


def test_dynamic_cnn_leaves_conv_in_float(cnn: Model, tmp_path: Path) -> None:
    model, images = cnn
    variant = build_variant(model, "int8_dynamic", images, tmp_path)
    graph = onnx.load_model_from_string(variant).graph
    floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == 2 and all(node.input[1] in floats for node in convs)
    assert "ConvInteger" not in _ops(variant)
    assert "MatMulInteger" in _ops(variant)  # the Linear head is still quantized


def test_static_cnn_matches_fp32(cnn: Model, tmp_path: Path) -> None:
    model, images = cnn
    variant = build_variant(model, "int8_static", images[:32], tmp_path)
    report = measure_variant(model, variant, images[32:], task="classification", single_calls=5, batch_repeats=2)
    assert report["agreement"]["max_abs_score_diff"] < 0.1


def test_static_folds_sklearn_dense_layers_into_gemm(pipeline: Model, tmp_path: Path) -> None:
    model, X = pipeline
    assert "Gemm" not in _ops(model)  # skl2onnx writes MatMul + Add
    ops = _ops(build_variant(model, "int8_static", X[:100], tmp_path))
    assert "Gemm" in ops and "MatMul" not in ops


def _dense(input_shape: list[int | None], bias_shape: tuple[int, ...]) -> bytes:
    """``relu(X @ W1 + B1) @ W2`` on an input of the given shape (last dim 10)."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["m1"]),
        helper.make_node("Add", ["m1", "B1"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("MatMul", ["r1", "W2"], ["y"]),
    ]
    weights = {"W1": rng.normal(size=(10, 8)), "W2": rng.normal(size=(8, 3)), "B1": rng.normal(size=bias_shape)}
    return _graph(nodes, weights, input_shape)


@pytest.mark.parametrize(
    ("input_shape", "bias_shape", "fused"),
    [
        ([None, 10], (8,), True),
        ([None, 10], (1, 8), True),
        ([None, 4, 10], (8,), False),  # Gemm takes 2-D inputs only
    ],
)
def test_gemm_folding_is_exact_and_only_where_valid(
    input_shape: list[int | None], bias_shape: tuple[int, ...], fused: bool, tmp_path: Path
) -> None:
    model = _dense(input_shape, bias_shape)
    rows = np.random.default_rng(6).normal(size=[40 if d is None else d for d in input_shape]).astype(np.float32)
    variant = build_variant(model, "int8_static", rows, tmp_path)
    assert ("Gemm" in _ops(variant)) is fused
    report = measure_variant(model, variant, rows, task="regression", single_calls=2, batch_repeats=1)
    assert report["agreement"]["normalised_max_error"] < 0.05


@pytest.mark.parametrize("kind", VARIANT_KINDS)
def test_fixed_batch_export_builds_and_is_measured_a_row_at_a_time(kind: str, tmp_path: Path) -> None:
    model = _export_cnn(dynamic_batch=False)  # input shape [1, 3, 16, 16]
    images = np.random.default_rng(7).normal(size=(20, 3, 16, 16)).astype(np.float32)
    variant = build_variant(model, kind, images[:8], tmp_path)
    report = measure_variant(model, variant, images, task="classification", single_calls=3, batch_repeats=2)
    assert report["latency"]["batch_rows"] == 1 and report["rows"] == 20
    assert report["agreement"]["top1"] >= 0.9


def test_static_needs_calibration_that_fits(mlp: Model, tmp_path: Path) -> None:
    model, X = mlp
    for bad in (None, X[:0], X[:10, :7], X[0], np.full((4, FEATURES), np.nan, dtype=np.float32)):
        with pytest.raises(InvalidRequest) as caught:
            build_variant(model, "int8_static", bad, tmp_path)
        assert caught.value.code == "invalid_calibration" and caught.value.field == "calibration"
    build_variant(model, "int8_dynamic", None, tmp_path)  # dynamic needs none


def test_unknown_kind_and_garbage_model_are_rejected(mlp: Model, tmp_path: Path) -> None:
    model, X = mlp
    with pytest.raises(InvalidRequest) as caught:
        build_variant(model, "int4", X, tmp_path)
    assert caught.value.code == "invalid_variant"
    with pytest.raises(ModelRejected):
        build_variant(b"not onnx", "fp16", X, tmp_path)


def test_quantizer_crash_is_quantization_failed(mlp: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom inside onnxruntime.quantization")

    monkeypatch.setattr(onnxruntime.quantization, "quantize_dynamic", crash)
    with pytest.raises(ExplanationFailed) as caught:
        build_variant(mlp[0], "int8_dynamic", None, tmp_path)
    assert caught.value.code == "quantization_failed"
    assert "boom inside onnxruntime.quantization" in caught.value.detail


def _report(task: str, single: float, batch: float, top1: float = 1.0, error: float = 0.0) -> dict[str, Any]:
    """A hand-made report with just the fields the gate and the picker read."""
    agreement = {"top1": top1} if task == "classification" else {"normalised_max_error": error}
    return {"agreement": agreement, "latency": {"speedup": {"single_row": single, "batch": batch}}}


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


def test_gate_rejects_an_unknown_task() -> None:
    with pytest.raises(InvalidRequest) as caught:
        passes_gate(_report("classification", 1, 1), "ranking")
    assert caught.value.code == "invalid_task"

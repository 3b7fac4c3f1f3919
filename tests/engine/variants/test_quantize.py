"""Quantized variants, built on real models in the session.

The models are small but real (see ``tests.engine.variants.quantize_models``), plus a
random forest, which has nothing to quantize. How faithful a variant is, is
tested in ``test_fidelity.py``; ``measure_variant`` only measures here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import onnxruntime.quantization
import pytest
from onnx import TensorProto, helper

from engine.errors import ExplanationFailed, InvalidRequest, ModelRejected
from engine.runtime.hardware import profile_from
from engine.variants.fidelity import measure_variant
from engine.variants.quantize import QUANTIZED_KINDS, build_variant, has_quantizable_ops
from tests.engine.variants import quantize_models as models
from tests.engine.variants.quantize_models import FEATURES, Model


@pytest.fixture(scope="module")
def mlp() -> Model:
    """An MLPClassifier on 10 features (no ai.onnx.ml preprocessing)."""
    return models.mlp()


@pytest.fixture(scope="module")
def pipeline() -> Model:
    """StandardScaler + MLPClassifier on unscaled features: the graph starts with a Scaler."""
    return models.pipeline()


@pytest.fixture(scope="module")
def cnn() -> Model:
    """The tiny CNN with a dynamic batch, and random images."""
    model = models.export_cnn(dynamic_batch=True)
    return model, np.random.default_rng(3).normal(size=(64, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def forest() -> Model:
    """A random forest: a TreeEnsemble graph with nothing to quantize."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = models.tabular(n=300)
    return models.sklearn_onnx(RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0), X, y > 0), X


@pytest.fixture(scope="module")
def wide_range() -> Model:
    """A regressor int8 cannot represent: one huge weight beside ordinary ones."""
    return models.wide_range()


def _ops(model_bytes: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_model_from_string(model_bytes).graph.node}


@pytest.mark.parametrize("kind", QUANTIZED_KINDS)
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


@pytest.mark.parametrize("kind", QUANTIZED_KINDS)
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
    return models.float_graph(nodes, weights, input_shape)


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


def _largest_int8_weight(model_bytes: bytes) -> int:
    graph = onnx.load_model_from_string(model_bytes).graph
    weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer if t.data_type == TensorProto.INT8]
    assert weights, "no int8 weights in the variant"
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights if w.size > 1)


@pytest.mark.parametrize("kind", ["int8_dynamic", "int8_static"])
def test_int8_scheme_follows_the_cpu_not_the_host(mlp: Model, kind: str, tmp_path: Path) -> None:
    """x86 without VNNI saturates 8-bit u8s8 dot products, so it gets 7-bit weights; VNNI and ARM the full range."""
    model, X = mlp
    avx2 = profile_from("x86_64", {"avx2", "fma"}, "1")
    vnni = profile_from("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "1")
    arm = profile_from("aarch64", {"asimd", "asimddp"}, "1")
    assert avx2.reduce_range and not vnni.reduce_range and not arm.reduce_range
    assert {avx2.kind, vnni.kind, arm.kind} == {"x86-novnni", "x86-vnni", "aarch64"}
    assert _largest_int8_weight(build_variant(model, kind, X[:200], tmp_path, cpu=avx2)) <= 64
    assert _largest_int8_weight(build_variant(model, kind, X[:200], tmp_path, cpu=vnni)) > 64
    assert _largest_int8_weight(build_variant(model, kind, X[:200], tmp_path, cpu=arm)) > 64


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

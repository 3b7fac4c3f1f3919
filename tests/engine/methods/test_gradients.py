"""Gradients from the ONNX graph: which graphs are refused and why, and tabular gradients for an MLP."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from engine.errors import InvalidRequest
from engine.methods.differentiable import check, conv_layers, output_subgraph
from tests import builders, deep_models


def test_a_tree_model_is_not_differentiable_and_the_operator_is_named():
    forest = onnx.load_from_string(builders.forest_classifier().onnx_bytes)
    verdict = check(forest, "probabilities")
    assert not verdict.ok and verdict.operator == "ai.onnx.ml:TreeEnsembleClassifier"
    assert "TreeEnsembleClassifier" in verdict.reason


def test_a_string_input_model_is_not_differentiable():
    text = onnx.load_from_string(deep_models.tfidf_classifier().onnx_bytes)
    verdict = check(text, "probabilities")
    assert not verdict.ok and "string" in verdict.reason and "'text'" in verdict.reason


def test_only_the_explained_outputs_path_counts():
    """A label output through ArgMax does not make the probabilities non-differentiable."""
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert check(model, "probabilities").ok
    assert not check(model, "label").ok and check(model, "label").operator == "ArgMax"
    assert [n.op_type for n in output_subgraph(model, "probabilities").graph.node] == ["Softmax"]
    assert not check(model, "missing").ok


def test_conv_layers_are_listed_without_torch():
    pytest.importorskip("torch")
    cnn = onnx.load_from_string(deep_models.digits_cnn().onnx_bytes)
    assert conv_layers(cnn, "probabilities") == ["/0/Conv", "/2/Conv"]


@pytest.fixture(scope="module")
def gradients():
    """engine.methods.gradients, which needs the optional 'gradients' extra (torch, onnx2torch, captum)."""
    pytest.importorskip("captum")
    pytest.importorskip("onnx2torch")
    from engine.methods import gradients as module

    return module


def refused(gradients, onnx_bytes: bytes, output: str, inputs: np.ndarray, reference) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        gradients.convert(onnx_bytes, output, check_inputs=inputs, reference=reference)
    assert caught.value.code == "method_not_supported_for_model" and caught.value.field == "method"
    return caught.value


def test_tree_model_asked_for_gradients_is_refused_naming_the_operator(gradients):
    forest = builders.forest_classifier()
    sess = deep_models.session(forest.onnx_bytes)
    error = refused(
        gradients,
        forest.onnx_bytes,
        "probabilities",
        forest.X[:8].astype(np.float32),
        lambda x: sess.run(["probabilities"], {"X": x})[0],
    )
    assert "ai.onnx.ml:TreeEnsembleClassifier" in error.detail


def test_an_operator_onnx2torch_cannot_convert_is_named(gradients):
    graph = helper.make_graph(
        [helper.make_node("Shrink", ["x"], ["y"], lambd=0.5)],
        "shrink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    sess = deep_models.session(model)
    error = refused(gradients, model, "y", np.ones((2, 2), np.float32), lambda x: sess.run(None, {"x": x})[0])
    assert "Shrink" in error.detail


def test_a_conversion_that_disagrees_with_the_served_session_is_refused(gradients, tmp_path):
    """The served session is an int8 variant of the MLP: its outputs differ from the fp32 graph by more than 1e-4."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_bytes, X, _ = deep_models.tabular_mlp()
    source, target = tmp_path / "mlp.onnx", tmp_path / "mlp.int8.onnx"
    source.write_bytes(onnx_bytes)
    quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8, reduce_range=True)
    int8 = deep_models.session(target.read_bytes())
    error = refused_with_key(
        gradients, onnx_bytes, X[:32].astype(np.float32), lambda x: int8.run(None, {"x": x})[0], "int8"
    )
    assert "disagrees with onnxruntime" in error.detail
    fp32 = deep_models.session(onnx_bytes)
    ok = gradients.convert(
        onnx_bytes, "probabilities", check_inputs=X[:32], reference=lambda x: fp32.run(None, {"x": x})[0]
    )
    assert ok.max_abs_diff <= gradients.TOLERANCE
    # converted once per model and served session
    again = gradients.convert(onnx_bytes, "probabilities", check_inputs=X[:32], reference=lambda x: 1 / 0)
    assert again is ok


def refused_with_key(gradients, onnx_bytes: bytes, inputs: np.ndarray, reference, key: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        gradients.convert(onnx_bytes, "probabilities", check_inputs=inputs, reference=reference, reference_key=key)
    assert caught.value.code == "method_not_supported_for_model"
    return caught.value


@pytest.fixture(scope="module")
def mlp(gradients):
    onnx_bytes, X, y = deep_models.tabular_mlp()
    sess = deep_models.session(onnx_bytes)

    def f(rows: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run(None, {"x": np.asarray(rows, dtype=np.float32)})[0], dtype=np.float64)

    converted = gradients.convert(onnx_bytes, "probabilities", check_inputs=X[:32], reference=f)
    return converted, f, X


def test_tabular_integrated_gradients_is_complete_against_onnxruntime(gradients, mlp):
    converted, f, X = mlp
    baseline = X[:100].mean(axis=0)
    targets = [[0, 1]] * 5
    results = gradients.tabular_gradients(
        converted, f, X[:5], targets, method="integrated_gradients", baseline=baseline
    )
    for row, result in zip(X[:5], results, strict=True):
        expected = f(row[None])[0] - f(baseline[None])[0]
        for j in range(2):
            delta = result.quality[j]["convergence_delta"]
            assert abs(result.maps[j].sum() - expected[j]) <= abs(delta) + 2 * gradients.TOLERANCE
        np.testing.assert_allclose(result.base_values, f(baseline[None])[0])


def test_tabular_saliency_is_the_gradient_of_the_onnx_model(gradients, mlp):
    """Ground truth: central finite differences through onnxruntime."""
    converted, f, X = mlp
    (result,) = gradients.tabular_gradients(converted, f, X[:1], [[1]], method="saliency")
    eps = 1e-2
    numeric = [(f((X[0] + eps * e)[None])[0, 1] - f((X[0] - eps * e)[None])[0, 1]) / (2 * eps) for e in np.eye(4)]
    np.testing.assert_allclose(result.maps[0], numeric, atol=2e-3, rtol=2e-2)
    assert result.base_values is None

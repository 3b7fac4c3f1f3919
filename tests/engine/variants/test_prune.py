"""Pruned variants on real models: sparsity counted on the initializers, neurons removed, graphs valid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from engine.errors import InvalidRequest
from engine.variants.build import drift_flag
from engine.variants.fidelity import measure_variant, passes_gate
from engine.variants.prune import check_sparsity, prune, weight_sparsity
from engine.variants.quantize import build_variant
from tests.engine.variants import quantize_models as models
from tests.engine.variants.quantize_models import Model


@pytest.fixture(scope="module")
def mlp() -> Model:
    """An MLPClassifier (32, 16) on 10 features, skl2onnx: MatMul + Add + Relu layers."""
    return models.mlp()


@pytest.fixture(scope="module")
def cnn() -> bytes:
    """A torch CNN: Conv → Relu → Conv → Relu → pool → Gemm."""
    return models.export_cnn(dynamic_batch=True)


def _weights(model_bytes: bytes) -> dict[str, np.ndarray]:
    model = onnx.load_model_from_string(model_bytes)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    names = [n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm", "Conv")]
    return {name: inits[name] for name in names if name in inits}


def _typed_output(model_bytes: bytes, shape: list[int | None]) -> bytes:
    """Give the hand-made graph's output a shape: onnx's full check wants one."""
    model = onnx.load_model_from_string(model_bytes)
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape))
    return bytes(model.SerializeToString())


def _run(model_bytes: bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {session.get_inputs()[0].name: rows})[-1]
    return out


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_magnitude_pruning_reaches_the_sparsity_on_every_weight_tensor(mlp: Model, cnn: bytes, sparsity: float) -> None:
    for model in (mlp[0], cnn):
        pruned, info = prune(model, "prune_magnitude", sparsity)
        before, after = _weights(model), _weights(pruned)
        assert before.keys() == after.keys() and before
        for name, weights in after.items():
            assert weights.shape == before[name].shape
            assert np.count_nonzero(weights == 0) == int(np.floor(sparsity * weights.size))
            kept = weights != 0  # the survivors are untouched and at least as large as any zeroed weight
            np.testing.assert_array_equal(weights[kept], before[name][kept])
            assert np.abs(before[name][~kept]).max() <= np.abs(before[name][kept]).min()
        zeros = sum(int(np.count_nonzero(w == 0)) for w in after.values())
        counted = zeros / sum(w.size for w in after.values())
        assert info["sparsity_achieved"] == pytest.approx(counted) == pytest.approx(weight_sparsity(pruned))
        assert abs(counted - sparsity) < 0.01
        assert info["speeds_up"] is False and "onnxruntime" in info["note"]
        onnx.checker.check_model(onnx.load_model_from_string(pruned), full_check=True)


def test_mild_magnitude_pruning_keeps_the_mlp_within_the_gate(mlp: Model) -> None:
    model, X = mlp
    pruned, _ = prune(model, "prune_magnitude", 0.3)
    report = measure_variant(model, pruned, X, task="classification", single_calls=10, batch_repeats=2)
    assert passes_gate(report, "classification")[0], report["agreement"]
    assert report["size_bytes"]["ratio"] == pytest.approx(1.0, abs=0.01)  # zeros are stored like any float


def test_far_pruning_fails_the_gate(mlp: Model) -> None:
    model, X = mlp
    for kind in ("prune_magnitude", "prune_structured"):
        pruned, _ = prune(model, kind, 0.97)
        report = measure_variant(model, pruned, X, task="classification", single_calls=10, batch_repeats=2)
        assert not passes_gate(report, "classification")[0], (kind, report["agreement"])


def test_structured_pruning_removes_the_requested_neurons(mlp: Model) -> None:
    model, X = mlp
    pruned, info = prune(model, "prune_structured", 0.5)
    before, after = _weights(model), _weights(pruned)
    assert [w.shape for w in before.values()] == [(10, 32), (32, 16), (16, 1)]
    assert [w.shape for w in after.values()] == [(10, 16), (16, 8), (8, 1)]
    graph = onnx.load_model_from_string(pruned).graph
    biases = {t.name: tuple(t.dims) for t in graph.initializer if t.name.startswith("intercepts")}
    assert biases == {"intercepts": (1, 16), "intercepts1": (1, 8), "intercepts2": (1, 1)}
    # The kept hidden units are those with the largest L1 norm of incoming weights, in order.
    first = before["coefficient"]
    kept = np.sort(np.argsort(np.abs(first).sum(axis=0), kind="stable")[16:])
    np.testing.assert_array_equal(after["coefficient"], first[:, kept])
    assert [(p["units"], p["removed"]) for p in info["layers"]] == [(32, 16), (16, 8)]
    assert info["units_removed_fraction"] == pytest.approx(0.5) and info["speeds_up"] is True
    onnx.checker.check_model(onnx.load_model_from_string(pruned), full_check=True)
    assert _run(pruned, X[:20]).shape == _run(model, X[:20]).shape
    assert len(pruned) < len(model)


def test_structured_pruning_of_a_cnn_drops_filters_and_the_next_inputs(cnn: bytes) -> None:
    pruned, info = prune(cnn, "prune_structured", 0.5)
    shapes = {name: w.shape for name, w in _weights(pruned).items()}
    originals = {name: w.shape for name, w in _weights(cnn).items()}
    conv1, conv2, linear = originals  # torch names them by module
    assert originals[conv1] == (8, 3, 3, 3) and shapes[conv1] == (4, 3, 3, 3)
    assert shapes[conv2] == (16, 4, 3, 3)  # the second conv feeds the pool: its filters stay
    assert shapes[linear] == originals[linear]
    assert [p["op"] for p in info["layers"]] == ["Conv"] and info["untouched"] == ["/6/Gemm"]
    graph = onnx.load_model_from_string(pruned).graph
    bias = next(n.input[2] for n in graph.node if n.op_type == "Conv")
    assert next(tuple(t.dims) for t in graph.initializer if t.name == bias) == (4,)
    onnx.checker.check_model(onnx.load_model_from_string(pruned), full_check=True)
    images = np.random.default_rng(1).normal(size=(3, 3, 16, 16)).astype(np.float32)
    assert _run(pruned, images).shape == (3, 4) and len(pruned) < len(cnn)


def test_removing_dead_neurons_leaves_the_outputs_exactly_as_they_were() -> None:
    """Units with the smallest incoming weights and no outgoing weights: pruning them changes nothing."""
    rng = np.random.default_rng(3)
    w1, w2 = rng.normal(size=(4, 6)), rng.normal(size=(6, 2))
    dead = [1, 4]
    w1[:, dead] *= 1e-3
    w2[dead, :] = 0.0
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "B1"], ["h"], transB=1),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("MatMul", ["a", "W2"], ["y"]),
    ]
    weights = {"W1": w1.T, "B1": rng.normal(size=6), "W2": w2}
    model = _typed_output(models.float_graph(nodes, weights, [None, 4]), [None, 2])
    pruned, info = prune(model, "prune_structured", 2 / 6)
    assert _weights(pruned)["W1"].shape == (4, 4) and info["layers"][0]["removed"] == 2
    rows = rng.normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(pruned, rows), _run(model, rows), rtol=1e-6, atol=1e-6)
    # Old exporters also declare initializers as graph inputs, with shapes that must follow the pruning.
    declared = onnx.load_model_from_string(model)
    for tensor in declared.graph.initializer:
        declared.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
    redeclared, _ = prune(declared.SerializeToString(), "prune_structured", 2 / 6)
    inputs = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in onnx.load_model_from_string(redeclared).graph.input
    }
    assert inputs["W1"] == [4, 4] and inputs["B1"] == [4] and inputs["W2"] == [4, 2]
    np.testing.assert_allclose(_run(redeclared, rows), _run(model, rows), rtol=1e-6, atol=1e-6)


def test_unsafe_structures_are_left_alone() -> None:
    """No activation between layers, or a hidden tensor used twice: nothing structured pruning may rewire."""
    linear, _ = models.wide_range()  # MatMul → MatMul
    shared = models.float_graph(
        [
            helper.make_node("MatMul", ["X", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "W2"], ["p"]),
            helper.make_node("Add", ["p", "h"], ["y"]),  # h is read again: its width is fixed
        ],
        {"W1": np.ones((3, 4)), "W2": np.ones((4, 4))},
        [None, 3],
    )
    for model in (linear, shared):
        with pytest.raises(InvalidRequest) as caught:
            prune(model, "prune_structured", 0.5)
        assert caught.value.code == "nothing_to_prune"


def test_pruned_then_quantized_builds_and_agrees(mlp: Model, tmp_path: Path) -> None:
    model, X = mlp
    pruned, _ = prune(model, "prune_structured", 0.25)
    variant = build_variant(pruned, "int8_static", X[:200], tmp_path)
    graph = onnx.load_model_from_string(variant).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    # On a model this small the QDQ nodes outweigh the weights; compare with int8 of the unpruned model.
    assert len(variant) < len(build_variant(model, "int8_static", X[:200], tmp_path))
    report = measure_variant(model, variant, X[200:], task="classification", single_calls=10, batch_repeats=2)
    assert report["agreement"]["top1"] > 0.9


def test_sparsity_is_checked_and_the_drift_flag_follows_the_threshold() -> None:
    for bad in (0, 1, 1.5, -0.1, "0.5", True, None):
        with pytest.raises(InvalidRequest) as caught:
            check_sparsity(bad)
        assert caught.value.field == "sparsity"
    assert check_sparsity(0.3) == 0.3
    assert drift_flag({"explanation_drift": {"spearman_mean": 0.85}}, 0.9)["drift_flagged"] is True
    assert drift_flag({"explanation_drift": {"spearman_mean": 0.95}}, 0.9)["drift_flagged"] is False
    assert drift_flag({"explanation_drift": None}, 0.9)["drift_flagged"] is False
    # The median decides where the report has one; a median on the threshold meets it.
    one_row_swapped = {"spearman_mean": 0.85, "spearman_median": 1.0}
    assert drift_flag({"explanation_drift": one_row_swapped}, 0.9)["drift_flagged"] is False
    on_the_line = {"spearman_mean": 0.95, "spearman_median": 0.8999999999999998}
    assert drift_flag({"explanation_drift": on_the_line}, 0.9)["drift_flagged"] is False
    assert drift_flag({"explanation_drift": {"spearman_median": 0.8}}, 0.9)["drift_flagged"] is True

"""Our vectorised interventional TreeSHAP against brute-force Shapley values through onnxruntime."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor

from engine.methods.trees.fast import InterventionalTrees
from engine.methods.trees.model import transform
from engine.methods.trees.reader import read_ensemble
from tests.shapley import brute_force_shapley

Fn = Callable[[np.ndarray], np.ndarray]
D = 6


def _f32(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _margin_session(model: onnx.ModelProto) -> Fn:
    """onnxruntime on the ensemble's raw scores: the same graph with ``post_transform`` NONE."""
    model = copy.deepcopy(model)
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    for a in node.attribute:
        if a.name == "post_transform":
            a.s = b"NONE"
    output = node.output[1] if node.op_type == "TreeEnsembleClassifier" else model.graph.output[0].name
    if output not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def f(z: np.ndarray) -> np.ndarray:
        y = session.run([output], {name: np.asarray(z, dtype=np.float32)})[0]
        return np.asarray(y, dtype=np.float64).reshape(len(z), -1)

    return f


def _onnx(model: Any, X: np.ndarray) -> onnx.ModelProto:
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    onx = to_onnx(model, X[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    assert isinstance(onx, onnx.ModelProto)
    return onx


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[onnx.ModelProto, np.ndarray]]:
    Xc, yc = make_classification(300, D, n_informative=4, random_state=0)
    Xm, ym = make_classification(300, D, n_informative=4, n_classes=3, random_state=1)
    Xr, yr = make_regression(300, D, noise=5, random_state=2)
    Xc, Xm, Xr = _f32(Xc), _f32(Xm), _f32(Xr)
    small = {"max_depth": 3, "random_state": 0}
    return {
        "gb_binary": (_onnx(GradientBoostingClassifier(n_estimators=15, **small).fit(Xc, yc), Xc), Xc),
        "gb_3class": (_onnx(GradientBoostingClassifier(n_estimators=6, **small).fit(Xm, ym), Xm), Xm),
        "rf_regression": (_onnx(RandomForestRegressor(n_estimators=8, **small).fit(Xr, yr / 100), Xr), Xr),
    }


@pytest.mark.parametrize("name", ["gb_binary", "gb_3class", "rf_regression"])
def test_margin_is_the_exact_interventional_shapley_value(
    name: str, models: dict[str, tuple[onnx.ModelProto, np.ndarray]]
) -> None:
    model, X = models[name]
    ensemble = read_ensemble(model.SerializeToString())
    rows, background = X[:3], X[100:140]
    trees = InterventionalTrees(ensemble, ensemble.prepare(background))
    phi, expected = trees.margin(ensemble.prepare(rows))
    margins = phi @ ensemble.matrix.T
    f = _margin_session(model)
    for i, x in enumerate(rows):
        base, truth = brute_force_shapley(f, x, background)
        np.testing.assert_allclose(margins[i], truth, rtol=0, atol=1e-6)
        np.testing.assert_allclose(ensemble.matrix @ expected + ensemble.offset, base, rtol=0, atol=1e-6)
    # Exactly additive on the trees' own scores, which the one-pass routing reproduces.
    scores = ensemble.scores(ensemble.prepare(rows))
    np.testing.assert_allclose(expected + phi.sum(axis=1), scores, rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        trees.scores(ensemble.prepare(X[:50])), ensemble.scores(ensemble.prepare(X[:50])), atol=1e-12
    )


def test_per_reference_values_average_to_the_margin(models: dict[str, tuple[onnx.ModelProto, np.ndarray]]) -> None:
    model, X = models["gb_3class"]
    ensemble = read_ensemble(model.SerializeToString())
    Z, B = ensemble.prepare(X[:2]), ensemble.prepare(X[100:130])
    trees = InterventionalTrees(ensemble, B)
    each = trees.per_reference(Z)
    assert each.shape == (2, 30, D, 3)
    np.testing.assert_allclose(each.mean(axis=1), trees.margin(Z)[0], rtol=0, atol=1e-12)
    gaps = ensemble.scores(Z)[:, None, :] - ensemble.scores(B)[None, :, :]
    np.testing.assert_allclose(each.sum(axis=2), gaps, rtol=0, atol=1e-9)
    identity = np.broadcast_to(np.eye(3), (2, 30, 3, 3))
    np.testing.assert_allclose(trees.mapped(Z, identity, ensemble.matrix), trees.margin(Z)[0], rtol=0, atol=1e-12)


def _class_split(m_x: np.ndarray, m_r: np.ndarray) -> np.ndarray:
    """``W`` with ``W (m_x − m_r) = p(x) − p(r)``: the softmax's Shapley values over the K margins, by brute force."""
    K = len(m_x)
    W = np.zeros((K, K))
    for c in range(K):
        if abs(m_x[c] - m_r[c]) < 1e-6:
            # A margin that does not move: its per-unit share is the softmax's slope at the midpoint.
            mid = transform(((m_x + m_r) / 2)[None, :], "SOFTMAX")[0]
            W[:, c] = mid * ((np.arange(K) == c) - mid[c])
            continue
        others = [j for j in range(K) if j != c]
        for size in range(K):
            weight = math.factorial(size) * math.factorial(K - size - 1) / math.factorial(K)
            for subset in itertools.combinations(others, size):
                point = m_r.copy()
                point[list(subset)] = m_x[list(subset)]
                before = transform(point[None, :], "SOFTMAX")[0]
                point[c] = m_x[c]
                W[:, c] += weight * (transform(point[None, :], "SOFTMAX")[0] - before)
        W[:, c] /= m_x[c] - m_r[c]
    return W


def test_three_class_probability_space_against_brute_force(
    models: dict[str, tuple[onnx.ModelProto, np.ndarray]],
) -> None:
    """Per reference row: brute-force margin Shapley values through onnxruntime, mapped by the class split."""
    model, X = models["gb_3class"]
    ensemble = read_ensemble(model.SerializeToString())
    assert ensemble.post_transform == "SOFTMAX"
    rows, background = X[:2], X[100:112]
    Z, B = ensemble.prepare(rows), ensemble.prepare(background)
    m_x, m_b = ensemble.margins(Z), ensemble.margins(B)
    maps = np.array([[_class_split(m_x[i], m_b[j]) for j in range(len(B))] for i in range(len(Z))])
    values = InterventionalTrees(ensemble, B).mapped(Z, maps, ensemble.matrix)
    f = _margin_session(model)
    for i, x in enumerate(rows):
        truth = np.zeros((D, 3))
        for j, b in enumerate(background):
            truth += brute_force_shapley(f, x, b[None, :])[1] @ maps[i, j].T / len(background)
        np.testing.assert_allclose(values[i], truth, rtol=0, atol=1e-6)
    # Adds up to the probabilities.
    probabilities = transform(m_x, "SOFTMAX")
    np.testing.assert_allclose(
        transform(m_b, "SOFTMAX").mean(axis=0) + values.sum(axis=1), probabilities, rtol=0, atol=1e-9
    )

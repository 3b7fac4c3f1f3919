"""The explanation methods against ground truth, on real ONNX models run by onnxruntime.

Ground truth is the brute-force Shapley implementation of ``tests.shapley``
(every subset, every background row), independent of ``engine.methods.exact``.
"""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import shap
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeRegressor

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, InvalidRequest, UnknownField
from engine.methods import (
    EXPLAINERS,
    METHODS,
    PARAMETERS,
    choose_auto,
    get_explainer,
    kernel_shap_reference,
    tree_shap,
    validate_params,
)
from engine.methods.base import Attributions, ExplainTask, ModelFn
from engine.methods.kernel_shap_reference import enumerated_coalitions, jackknife_std_errors
from engine.methods.linear import is_linear
from engine.methods.sampling import derived_seed, t_widening
from tests.shapley import brute_force_shapley

# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Model:
    """A real ONNX model, its onnxruntime function and data to explain it with."""

    onnx_bytes: bytes
    f: ModelFn
    X: FloatArray
    background: FloatArray
    output_names: list[str]

    def task(self, method: str, rows: slice | Sequence[int] = slice(0, 3), **params: Any) -> ExplainTask:
        X = self.X[rows]
        checked = validate_params(method, params)
        top = np.argmax(self.f(X), axis=1)
        return ExplainTask(
            f=self.f,
            X=X,
            background=self.background,
            feature_names=[f"x{i}" for i in range(X.shape[1])],
            output_names=self.output_names,
            targets=[[int(t)] for t in top] if len(self.output_names) > 1 else [[0]] * len(X),
            params=checked,
            seed=checked["seed"],
            onnx_model=self.onnx_bytes,
        )


def _session_fn(model: onnx.ModelProto, output: str, dtype: type = np.float32) -> ModelFn:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def f(z: FloatArray) -> FloatArray:
        y = session.run([output], {name: np.asarray(z, dtype=dtype)})[0]
        return np.asarray(y, dtype=np.float64).reshape(len(z), -1)

    return f


def _sk_model(estimator: Any, X: FloatArray, output: str, names: list[str], m: int = 20) -> Model:
    options = {"zipmap": False} if output == "probabilities" else None
    onx = to_onnx(estimator, X[:1].astype(np.float32), options=options)
    return Model(onx.SerializeToString(), _session_fn(onx, output), X[m:], X[:m], names)


def _data(d: int, n: int = 300, seed: int = 0) -> FloatArray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _f32(a: Any) -> Any:
    """Round to float32 so the ONNX graph stores exactly what sklearn computes with."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


@pytest.fixture(scope="module")
def mlp_binary() -> Model:
    X = _data(6)
    y = (X[:, 0] * X[:, 1] + np.sin(X[:, 2]) + 0.5 * X[:, 3] > 0).astype(int)
    est = MLPClassifier(hidden_layer_sizes=(12,), max_iter=300, random_state=0).fit(X, y)
    return _sk_model(est, X, "probabilities", ["no", "yes"])


@pytest.fixture(scope="module")
def mlp_multiclass() -> Model:
    X = _data(7, seed=1)
    y = np.digitize(X[:, 0] + X[:, 1] * X[:, 2], [-0.7, 0.7])
    est = MLPClassifier(hidden_layer_sizes=(12,), max_iter=300, random_state=0).fit(X, y)
    return _sk_model(est, X, "probabilities", ["a", "b", "c"])


@pytest.fixture(scope="module")
def tree_regression() -> Model:
    X = _data(5, seed=2)
    est = DecisionTreeRegressor(max_depth=4, random_state=0).fit(X, X[:, 0] * X[:, 1] + X[:, 2])
    return _sk_model(est, X, "variable", ["y"])


@pytest.fixture(scope="module")
def mlp_wide() -> Model:
    X = _data(10, n=330, seed=3)
    y = (X[:, 0] * X[:, 1] + np.sin(X[:, 2]) + X[:, 3] ** 2 - 1 + 0.5 * X[:, 4] * X[:, 5] > 0).astype(int)
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(X, y)
    return _sk_model(est, X, "probabilities", ["no", "yes"], m=30)


@pytest.fixture(scope="module")
def linear_regression_12() -> Model:
    X = _data(12, seed=4)
    est = LinearRegression().fit(X, X @ np.arange(1.0, 13.0) + 0.5)
    return _sk_model(est, X, "variable", ["y"])


@pytest.fixture(scope="module")
def logistic_binary() -> tuple[Model, Any]:
    X = _data(6, seed=5)
    est = LogisticRegression().fit(X, (X[:, 0] - X[:, 1] + 0.3 * X[:, 2] > 0).astype(int))
    est.coef_, est.intercept_ = _f32(est.coef_), _f32(est.intercept_)
    return _sk_model(est, X, "probabilities", ["neg", "pos"]), est


@pytest.fixture(scope="module")
def logistic(logistic_binary: tuple[Model, Any]) -> Model:
    return logistic_binary[0]


@pytest.fixture(scope="module")
def scaled_logistic_multiclass() -> tuple[Model, Any]:
    X = _data(4, seed=6) * [1.0, 2.0, 4.0, 0.5] + 3.0
    est = make_pipeline(StandardScaler(), LogisticRegression())
    est.fit(X, np.digitize(X[:, 0] + X[:, 2] / 4, [3.5, 4.5]))
    scaler, lr = est.steps[0][1], est.steps[1][1]
    # Powers of two: 1/scale is exact in float32, so graph and sklearn agree to the last bit.
    scaler.mean_, scaler.scale_ = _f32(scaler.mean_), np.array([1.0, 2.0, 4.0, 0.5])
    lr.coef_, lr.intercept_ = _f32(lr.coef_), _f32(lr.intercept_)
    return _sk_model(est, X, "probabilities", ["lo", "mid", "hi"]), est


def _linear_classifier_one_row(w: Sequence[float], b: float) -> onnx.ModelProto:
    node = helper.make_node(
        "LinearClassifier",
        ["X"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        coefficients=list(w),
        intercepts=[b],
        classlabels_ints=[0, 1],
        post_transform="LOGISTIC",
    )
    graph = helper.make_graph(
        [node],
        "one_row",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(w)])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


def _affine_double(W: FloatArray, b: FloatArray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "affine",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, W.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [None, W.shape[1]])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# --------------------------------------------------------------------------- ground truth


def shapley_truth(f: Callable[[FloatArray], FloatArray], X: FloatArray, background: FloatArray) -> FloatArray:
    """Interventional Shapley values of each row of ``X``, ``(n, d, k)`` (``tests.shapley``'s ``phi``)."""
    return np.stack([brute_force_shapley(f, x, background)[1] for x in X])


def exact_truth(model: Model, X: FloatArray) -> FloatArray:
    return shapley_truth(model.f, X, model.background)


def additivity_residual(a: Attributions) -> float:
    """``|base + sum(phi) - output|``, relative once outputs exceed 1: float32 models agree only to ~1e-7."""
    residual = np.abs(a.base_values + a.values.sum(axis=1) - a.output_values)
    return float((residual / np.maximum(1.0, np.abs(a.output_values))).max())


def output_range(model: Model) -> FloatArray:
    spread: FloatArray = np.ptp(model.f(np.vstack([model.background, model.X])), axis=0)
    return spread


# --------------------------------------------------------------------------- exact


@pytest.mark.parametrize("name", ["mlp_binary", "mlp_multiclass", "tree_regression"])
def test_exact_equals_brute_force(name: str, request: pytest.FixtureRequest) -> None:
    model: Model = request.getfixturevalue(name)
    a = get_explainer("exact").explain(model.task("exact"))
    np.testing.assert_allclose(a.values, exact_truth(model, model.X[:3]), rtol=0, atol=1e-9)
    assert a.std_errors is None
    assert additivity_residual(a) < 1e-6


def test_exact_refuses_more_features_than_its_cap(mlp_binary: Model) -> None:
    with pytest.raises(InvalidRequest) as err:
        get_explainer("exact").explain(mlp_binary.task("exact", max_features=5))
    assert err.value.code == "too_many_features"


def test_exact_gives_zero_to_a_feature_equal_to_every_background_value(mlp_binary: Model) -> None:
    background = mlp_binary.background.copy()
    background[:, 2] = 1.5
    X = mlp_binary.X[:2].copy()
    X[:, 2] = 1.5
    task = mlp_binary.task("exact")
    a = get_explainer("exact").explain(
        ExplainTask(task.f, X, background, task.feature_names, task.output_names, [[1], [1]], task.params)
    )
    assert np.all(a.values[:, 2] == 0)
    assert additivity_residual(a) < 1e-6


# --------------------------------------------------------------------------- kernel_shap


@pytest.mark.parametrize("name", ["logistic", "mlp_binary", "mlp_multiclass", "tree_regression"])
def test_kernel_shap_is_exact_when_the_budget_covers_every_coalition(name: str, request: pytest.FixtureRequest) -> None:
    model: Model = request.getfixturevalue(name)
    a = get_explainer("kernel_shap").explain(model.task("kernel_shap", nsamples=2**8))
    np.testing.assert_allclose(a.values, exact_truth(model, model.X[:3]), rtol=0, atol=1e-9)
    assert a.std_errors is not None and np.all(a.std_errors == 0)
    assert all(q["exact"] and q["converged"] for q in a.quality)


@pytest.mark.parametrize(("name", "nsamples"), [("mlp_multiclass", 125), ("tree_regression", 29), ("mlp_wide", 1000)])
def test_kernel_shap_sampled_is_close_to_exact_and_additive(
    name: str, nsamples: int, request: pytest.FixtureRequest
) -> None:
    model: Model = request.getfixturevalue(name)
    # Fewer than the 2^d - 2 coalitions, so every row is sampled.
    a = get_explainer("kernel_shap").explain(model.task("kernel_shap", nsamples=nsamples))
    assert not any(q["exact"] for q in a.quality)
    assert a.info["nsamples"] == nsamples and "runs" not in a.info
    if len(model.background) > a.info["background_rows"]:  # pairs on 10 of the rows: one control or the other
        assert a.info["control_variates"] and set(a.info["control_variates"]) <= {"baseline", "linear"}
    error = np.abs(a.values - exact_truth(model, model.X[:3])).max(axis=(0, 1))
    assert np.all(error <= 1e-2 * output_range(model))
    assert a.std_errors is not None and np.all(a.std_errors[:, :, :] >= 0)
    assert additivity_residual(a) < 1e-6


def _raw_kernel_shap(model: Model, x: FloatArray, nsamples: int, seed: int) -> FloatArray:
    explainer = shap.KernelExplainer(model.f, model.background)
    np.random.seed(derived_seed(seed, 0))
    return np.asarray(explainer.shap_values(x[None, :], nsamples=nsamples, l1_reg=False, silent=True)).reshape(
        len(x), -1
    )


def test_kernel_shap_reference_is_one_raw_kernel_explainer_run_per_row(mlp_wide: Model) -> None:
    # The point estimate is shap's own at the whole budget: no accuracy is spent on the error estimate.
    a = _run(mlp_wide, "kernel_shap_reference", [0, 1], nsamples=300, seed=5)
    for i, x in enumerate(mlp_wide.X[:2]):
        np.testing.assert_allclose(a.values[i], _raw_kernel_shap(mlp_wide, x, 300, 5), rtol=0, atol=1e-12)


def test_kernel_shap_reference_jackknife_matches_brute_force_deletion(mlp_wide: Model) -> None:
    # Re-solve shap's constrained regression without each draw, by brute force, and compare.
    explainer = shap.KernelExplainer(mlp_wide.f, mlp_wide.background)
    np.random.seed(3)
    phi = np.asarray(explainer.explain(mlp_wide.X[:1], nsamples=512, l1_reg=False))
    se = jackknife_std_errors(explainer, phi)
    n, p = explainer.nsamplesAdded, explainer.M
    mask, weights = explainer.maskMatrix[:n], explainer.kernelWeights[:n]
    fixed = enumerated_coalitions(p, explainer.nsamples)
    assert fixed == 110  # sizes 1 and 9, 2 and 8
    total = explainer.fx - explainer.fnull
    X = mask[:, :-1] - mask[:, -1:]
    Y = explainer.ey[:n] - explainer.fnull - mask[:, -1:] * total
    # Draws: a sampled coalition of size <= 4 is followed by its complement; size 5 comes alone.
    units: list[list[int]] = []
    for row in range(fixed, n):
        if mask[row].sum() >= 6:
            units[-1].append(row)
        else:
            units.append([row])
    unit_weight = np.array([weights[u[0]] for u in units])
    counts = np.rint(unit_weight / unit_weight.min()).astype(int)
    replicates = []
    for u in range(len(units)):
        c = counts.copy()
        c[u] -= 1
        w = weights.copy()
        for v, rows in enumerate(units):
            w[rows] = c[v]
        w[fixed:] *= weights[fixed:].sum() / w[fixed:].sum()
        beta = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w[:, None] * Y))
        replicates += [np.vstack([beta, total - beta.sum(axis=0)])] * int(counts[u])
    draws = np.array(replicates)
    jack = np.sqrt((len(draws) - 1) / len(draws) * ((draws - draws.mean(axis=0)) ** 2).sum(axis=0))
    np.testing.assert_allclose(se, jack * t_widening(len(draws) - 1), rtol=1e-9)


def test_kernel_shap_explains_a_class_that_was_not_predicted(mlp_multiclass: Model) -> None:
    task = mlp_multiclass.task("kernel_shap", nsamples=120)
    losing = [[int(np.argmin(p))] for p in mlp_multiclass.f(task.X)]
    a = get_explainer("kernel_shap").explain(
        ExplainTask(task.f, task.X, task.background, task.feature_names, task.output_names, losing, task.params)
    )
    assert a.values.shape == (3, 7, 3) and a.base_values.shape == (3, 3)
    truth = exact_truth(mlp_multiclass, task.X)
    cols = [t[0] for t in losing]
    error = np.abs(a.values - truth)[np.arange(3), :, cols]
    assert error.max() <= 0.05 * output_range(mlp_multiclass)[cols].max()
    assert additivity_residual(a) < 1e-6


def test_kernel_shap_reference_keeps_every_feature_by_default(linear_regression_12: Model) -> None:
    # shap's own default would keep 10 of these 12 attributions and zero the rest.
    model = linear_regression_12
    a = get_explainer("kernel_shap_reference").explain(model.task("kernel_shap_reference", [0], nsamples=1000))
    assert not any(q["exact"] for q in a.quality)
    np.testing.assert_allclose(a.values, exact_truth(model, model.X[:1]), atol=1e-5 * output_range(model)[0])
    assert np.all(a.values != 0)


def test_kernel_shap_reference_records_truncation(linear_regression_12: Model) -> None:
    task = linear_regression_12.task("kernel_shap_reference", nsamples=1000, l1_reg=4)
    a = get_explainer("kernel_shap_reference").explain(task)
    assert a.info["l1_reg"] == "num_features(4)"
    kept = a.values != 0
    assert np.all(kept.sum(axis=1) <= 5)
    # std_error is conditional on the kept features; the dropped ones get 0.
    assert a.std_errors is not None and np.all(a.std_errors[~kept] == 0)
    assert additivity_residual(a) < 1e-6


def test_kernel_shap_on_the_whole_background_is_exact_for_a_linear_model_whatever_the_sample(
    linear_regression_12: Model,
) -> None:
    # An additive game leaves no residual: the constrained regression recovers it from any sample.
    model = linear_regression_12
    a = get_explainer("kernel_shap").explain(model.task("kernel_shap", [0, 1], nsamples=300, background_rows=10_000))
    assert not any(q["exact"] for q in a.quality) and a.info["background_rows"] == len(model.background)
    assert a.info["control_variates"] == []  # no pair on part of the background
    np.testing.assert_allclose(a.values, exact_truth(model, model.X[:2]), atol=1e-5 * output_range(model)[0])
    assert a.std_errors is not None and a.std_errors.max() <= 1e-5 * output_range(model)[0]


def test_kernel_shap_tolerance_reports_rounds_and_convergence(mlp_wide: Model) -> None:
    a = _run(mlp_wide, "kernel_shap", [0, 1], nsamples=4000, tolerance=5e-3)
    assert a.std_errors is not None
    for i, quality in enumerate(a.quality):
        assert quality["rounds"] >= 1
        assert quality["converged"] == bool(a.std_errors[i].max() <= 5e-3)
    assert additivity_residual(a) < 1e-6
    with pytest.raises(UnknownField):
        validate_params("kernel_shap", {"l1_reg": 4})  # truncation is kernel_shap_reference's


def _run(model: Model, method: str, rows: Sequence[int], **params: Any) -> Attributions:
    return get_explainer(method).explain(model.task(method, rows, **params))


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("kernel_shap", {"nsamples": 96}),
        ("permutation", {"max_evals": 120, "repeats": 2}),
        ("lime", {"num_samples": 400}),
    ],
)
def test_same_seed_gives_the_same_answer_whatever_ran_before(
    mlp_multiclass: Model, method: str, params: dict[str, Any]
) -> None:
    first = _run(mlp_multiclass, method, [0, 1], seed=7, **params)
    _run(mlp_multiclass, method, [2], seed=8, **params)
    alone = _run(mlp_multiclass, method, [1], seed=7, **params)
    again = _run(mlp_multiclass, method, [1, 0], seed=7, **params)
    np.testing.assert_array_equal(first.values[1], alone.values[0])
    np.testing.assert_array_equal(first.values[[1, 0]], again.values)
    other = _run(mlp_multiclass, method, [0, 1], seed=9, **params)
    assert not np.array_equal(first.values, other.values)


@pytest.mark.parametrize(
    ("method", "params"), [("kernel_shap", {"nsamples": 512}), ("permutation", {"max_evals": 400})]
)
def test_std_error_is_honest(mlp_wide: Model, method: str, params: dict[str, Any]) -> None:
    truth = exact_truth(mlp_wide, mlp_wide.X[:3])[:, :, 1]
    errors, std_errors = [], []
    for seed in range(20):
        a = _run(mlp_wide, method, [0, 1, 2], seed=seed, **params)
        assert a.std_errors is not None
        errors.append(np.abs(a.values[:, :, 1] - truth))
        std_errors.append(a.std_errors[:, :, 1])
    error, se = np.array(errors), np.array(std_errors)
    assert np.all(se > 0)
    assert np.mean(error <= se) >= 0.6
    assert np.mean(error <= 2 * se) >= 0.9


def test_time_budget_lowers_nsamples_and_returns_an_estimate_with_its_error(mlp_wide: Model) -> None:
    a = _run(mlp_wide, "kernel_shap", [0, 1], nsamples=1000, time_budget_ms=1)
    assert a.info["time_budget_exhausted"] and a.info["nsamples"] == 20  # the floor: 2 × 10 features
    assert a.std_errors is not None and np.all(np.isfinite(a.std_errors)) and np.all(a.std_errors > 0)
    assert additivity_residual(a) < 1e-6
    roomy = _run(mlp_wide, "kernel_shap", [0, 1], nsamples=300, time_budget_ms=600_000)
    assert roomy.info["nsamples"] == 300 and "time_budget_exhausted" not in roomy.info
    np.testing.assert_array_equal(roomy.values, _run(mlp_wide, "kernel_shap", [0, 1], nsamples=300).values)


def test_permutation_time_budget_keeps_two_groups(mlp_wide: Model) -> None:
    a = _run(mlp_wide, "permutation", [0], max_evals=400, repeats=8, time_budget_ms=1)
    assert a.info["repeats"] == 2 and a.info["time_budget_exhausted"]
    assert a.std_errors is not None and np.all(np.isfinite(a.std_errors))
    assert additivity_residual(a) < 1e-6


def test_kernel_shap_refuses_fewer_than_two_coalitions_per_feature(mlp_wide: Model) -> None:
    with pytest.raises(InvalidRequest) as err:
        _run(mlp_wide, "kernel_shap", [0], nsamples=19)
    assert (err.value.code, err.value.field) == ("invalid_parameter", "parameters.nsamples")


def test_kernel_shap_reference_splits_runs_to_bound_memory(mlp_wide: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel_shap_reference, "MAX_SYNTHETIC_ROWS", 300 * len(mlp_wide.background) // 2)
    a = _run(mlp_wide, "kernel_shap_reference", [0], nsamples=300)
    assert (a.info["runs"], a.info["samples_per_run"]) == (2, 150)
    assert a.std_errors is not None and np.all(a.std_errors > 0)
    error = np.abs(a.values - exact_truth(mlp_wide, mlp_wide.X[:1]))[:, :, 1]
    assert np.all(error <= 4 * a.std_errors[:, :, 1] + 1e-9)
    assert additivity_residual(a) < 1e-6


# --------------------------------------------------------------------------- permutation


@pytest.mark.parametrize("name", ["mlp_binary", "mlp_multiclass", "tree_regression"])
def test_permutation_is_additive_and_close_to_exact(name: str, request: pytest.FixtureRequest) -> None:
    model: Model = request.getfixturevalue(name)
    a = get_explainer("permutation").explain(model.task("permutation"))
    assert additivity_residual(a) < 1e-6
    assert a.std_errors is not None and a.std_errors.shape == a.values.shape
    error = np.abs(a.values - exact_truth(model, model.X[:3])).max(axis=(0, 1))
    assert np.all(error <= 0.05 * output_range(model))
    assert a.info["repeats"] == 8


def test_permutation_spends_every_ordering_of_one_raw_run(mlp_wide: Model) -> None:
    # 400 // 21 = 19 orderings, as one raw PermutationExplainer call would average, in 8 groups.
    a = _run(mlp_wide, "permutation", [0], max_evals=400)
    assert (a.info["repeats"], a.info["orderings"]) == (8, 19)
    few = _run(mlp_wide, "permutation", [0], max_evals=63, repeats=8)
    assert (few.info["repeats"], few.info["orderings"]) == (3, 3)


def test_permutation_refuses_too_few_evaluations(mlp_wide: Model) -> None:
    with pytest.raises(InvalidRequest) as err:
        _run(mlp_wide, "permutation", [0], max_evals=41)
    assert err.value.field == "parameters.max_evals"


# --------------------------------------------------------------------------- lime


def test_lime_reports_its_surrogate(mlp_multiclass: Model) -> None:
    a = _run(mlp_multiclass, "lime", [0, 1], num_samples=500, seed=3)
    task = mlp_multiclass.task("lime", [0, 1])
    for i, (target,) in enumerate(task.targets):
        name = task.output_names[target]
        quality = a.quality[i]
        assert 0 <= quality["score"][name] <= 1
        assert quality["intercept"][name] == a.base_values[i, target]
        assert quality["model_output"][name] == pytest.approx(mlp_multiclass.f(task.X)[i, target])
        assert np.any(a.values[i, :, target] != 0)
        others = [c for c in range(3) if c != target]
        assert np.all(a.values[i][:, others] == 0)


def test_lime_keeps_only_num_features(mlp_multiclass: Model) -> None:
    a = _run(mlp_multiclass, "lime", [0], num_samples=500, num_features=2, discretize_continuous=False)
    assert (a.values[0] != 0).sum() == 2


def test_lime_regression(tree_regression: Model) -> None:
    a = _run(tree_regression, "lime", [0, 1], num_samples=500)
    assert a.info["mode"] == "regression"
    assert a.values.shape == (2, 5, 1)
    assert all(0 <= q["score"]["y"] <= 1 for q in a.quality)


# --------------------------------------------------------------------------- tree_shap


def test_tree_shap_reads_each_graph_once_per_worker(tree_regression: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = tree_shap.read_ensemble

    def counting(onnx_bytes: bytes) -> Any:
        reads.append(len(onnx_bytes))
        return real(onnx_bytes)

    monkeypatch.setattr(tree_shap, "read_ensemble", counting)
    monkeypatch.setattr(tree_shap, "_cache", OrderedDict())
    first = _run(tree_regression, "tree_shap", [0, 1])
    again = _run(tree_regression, "tree_shap", [2, 0])
    assert len(reads) == 1
    np.testing.assert_array_equal(first.values[0], again.values[1])
    np.testing.assert_allclose(first.values, exact_truth(tree_regression, tree_regression.X[:2]), atol=1e-5)
    # The cached ensemble is still checked against onnxruntime on the rows explained.
    task = tree_regression.task("tree_shap", [0, 1])
    wrong = ExplainTask(
        lambda z: tree_regression.f(z) + 1.0,
        task.X,
        task.background,
        task.feature_names,
        task.output_names,
        task.targets,
        task.params,
        onnx_model=task.onnx_model,
    )
    with pytest.raises(ExplanationFailed, match="differ from onnxruntime"):
        get_explainer("tree_shap").explain(wrong)
    assert len(reads) == 1


def test_tree_shap_cache_keeps_the_latest_graphs(tree_regression: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_shap, "_cache", OrderedDict())
    monkeypatch.setattr(tree_shap, "CACHED_ENSEMBLES", 1)
    ensemble = tree_shap.cached_ensemble(tree_regression.onnx_bytes)
    assert tree_shap.cached_ensemble(tree_regression.onnx_bytes) is ensemble
    assert not ensemble.trees[0].value.flags.writeable
    other = onnx.load_from_string(tree_regression.onnx_bytes)
    other.doc_string = "another graph, same trees"
    tree_shap.cached_ensemble(other.SerializeToString())
    assert len(tree_shap._cache) == 1
    assert tree_shap.cached_ensemble(tree_regression.onnx_bytes) is not ensemble


# --------------------------------------------------------------------------- linear


def _linear_task(model: Model, rows: slice = slice(0, 4)) -> ExplainTask:
    return model.task("linear", rows)


def test_linear_binary_logistic_matches_brute_force_margins(logistic_binary: tuple[Model, Any]) -> None:
    model, est = logistic_binary
    a = get_explainer("linear").explain(_linear_task(model))

    def margins(z: FloatArray) -> FloatArray:
        s = est.decision_function(z)
        return np.column_stack([-s, s])

    truth = shapley_truth(margins, model.X[:4], model.background)
    np.testing.assert_allclose(a.values, truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.output_values, margins(model.X[:4]), rtol=0, atol=1e-9)
    # Class 0's margin is its log-odds, the negation of class 1's.
    np.testing.assert_array_equal(a.values[:, :, 0], -a.values[:, :, 1])
    assert a.info["output_space"] == "margin" and a.std_errors is None
    assert additivity_residual(a) < 1e-9


def test_linear_composes_the_scaler_for_multiclass(scaled_logistic_multiclass: tuple[Model, Any]) -> None:
    model, est = scaled_logistic_multiclass
    a = get_explainer("linear").explain(_linear_task(model))
    truth = shapley_truth(est.decision_function, model.X[:4], model.background)
    np.testing.assert_allclose(a.values, truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(a.output_values, est.decision_function(model.X[:4]), rtol=0, atol=1e-9)
    assert a.info["source"] == "graph"


def test_linear_one_row_binary_classifier(logistic_binary: tuple[Model, Any]) -> None:
    w, b = [0.5, -1.25, 2.0], 0.25
    onx = _linear_classifier_one_row(w, b)
    X = logistic_binary[0].X[:, :3]
    model = Model(onx.SerializeToString(), _session_fn(onx, "probabilities"), X[20:], X[:20], ["neg", "pos"])
    a = get_explainer("linear").explain(_linear_task(model))
    truth = shapley_truth(lambda z: (z @ w + b)[:, None], model.X[:4], model.background)
    np.testing.assert_allclose(a.values[:, :, 1:], truth, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(a.values[:, :, 0], -a.values[:, :, 1])
    probability = 1 / (1 + np.exp(-a.output_values[:, 1]))
    np.testing.assert_allclose(probability, model.f(model.X[:4])[:, 1], atol=1e-6)


def test_linear_fits_an_affine_graph_through_the_model(tree_regression: Model) -> None:
    W, b = np.array([[1.5], [-2.0], [0.25], [3.0], [0.0]]), np.array([0.75])
    onx = _affine_double(W, b)
    X = tree_regression.X
    model = Model(onx.SerializeToString(), _session_fn(onx, "Y", np.float64), X[20:], X[:20], ["y"])
    assert is_linear(model.onnx_bytes)
    a = get_explainer("linear").explain(_linear_task(model))
    truth = shapley_truth(lambda z: z @ W + b, model.X[:4], model.background)
    np.testing.assert_allclose(a.values, truth, rtol=0, atol=1e-9)
    assert a.info["source"] == "fitted"


def test_linear_refuses_a_nonlinear_model(mlp_binary: Model, tree_regression: Model) -> None:
    for model in (mlp_binary, tree_regression):
        assert not is_linear(model.onnx_bytes)
        with pytest.raises(InvalidRequest) as err:
            get_explainer("linear").explain(_linear_task(model))
        assert (err.value.code, err.value.field) == ("method_not_applicable", "method")


def test_is_linear_reads_linear_graphs(
    logistic_binary: tuple[Model, Any], scaled_logistic_multiclass: tuple[Model, Any], linear_regression_12: Model
) -> None:
    assert is_linear(logistic_binary[0].onnx_bytes)
    assert is_linear(scaled_logistic_multiclass[0].onnx_bytes)
    assert is_linear(linear_regression_12.onnx_bytes)
    assert not is_linear(b"not an onnx model")


# --------------------------------------------------------------------------- registry and parameters


def test_registry_names_every_method() -> None:
    tabular = {
        name: METHODS[name].target_for("tabular") for name in EXPLAINERS if "tabular" in METHODS[name].input_kinds
    }
    assert tabular == {
        "kernel_shap": "engine.methods.kernel_shap:KernelShap",
        "kernel_shap_reference": "engine.methods.kernel_shap_reference:KernelShapReference",
        "lime": "engine.methods.lime_tabular:LimeTabular",
        "exact": "engine.methods.exact:Exact",
        "permutation": "engine.methods.permutation:Permutation",
        "linear": "engine.methods.linear:Linear",
        "tree_shap": "engine.methods.tree_shap:TreeShap",
        "integrated_gradients": "engine.methods.gradient_rows:RowIntegratedGradients",
        "saliency": "engine.methods.gradient_rows:RowSaliency",
        "anchors": "engine.methods.anchors:Anchors",
    }
    # Image and text methods run through engine.explain.perception; their targets name the implementing function.
    assert set(EXPLAINERS) - set(tabular) == {"partition", "occlusion", "grad_cam", "smoothgrad"}
    assert EXPLAINERS["saliency"] == "engine.methods.gradients:saliency"
    assert set(PARAMETERS) == set(EXPLAINERS)
    assert all(spec["seed"].default == 0 for spec in PARAMETERS.values())
    for name in tabular.keys() - {"tree_shap"}:
        explainer = get_explainer(name, "tabular")
        # Gradient methods take their baseline (or none) from the model, not from background coalitions.
        assert explainer.name == name and METHODS[name].needs_background == (not METHODS[name].gradients)


def test_registry_imports_no_heavy_library() -> None:
    # The API process imports the registry; shap, lime and numpy stay in the workers.
    code = "import sys, engine.methods; print(sorted({'shap', 'lime', 'numpy', 'onnx'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_get_explainer_refuses_an_unknown_method() -> None:
    with pytest.raises(InvalidRequest) as err:
        get_explainer("magic")
    assert (err.value.code, err.value.field) == ("unknown_method", "method")


def test_validate_params_fills_defaults() -> None:
    assert validate_params("kernel_shap", {"nsamples": 100}) == {
        "nsamples": 100,
        "background_rows": 10,
        "tolerance": None,
        "time_budget_ms": None,
        "seed": 0,
    }
    assert validate_params("kernel_shap_reference", {"nsamples": 100}) == {
        "nsamples": 100,
        "l1_reg": False,
        "time_budget_ms": None,
        "seed": 0,
    }
    assert validate_params("permutation", {})["repeats"] == 8
    assert validate_params("tree_shap", {})["output_space"] == "margin"
    assert validate_params("lime", {"num_features": None})["num_features"] is None


@pytest.mark.parametrize("value", [False, 5, "num_features(3)", "aic", "bic"])
def test_validate_params_accepts_l1_reg(value: Any) -> None:
    assert validate_params("kernel_shap_reference", {"l1_reg": value})["l1_reg"] == value


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("kernel_shap", {"nsamples": 15}, "parameters.nsamples"),
        ("kernel_shap", {"nsamples": 100_001}, "parameters.nsamples"),
        ("kernel_shap", {"nsamples": 100.0}, "parameters.nsamples"),
        ("permutation", {"repeats": 1}, "parameters.repeats"),
        ("kernel_shap", {"nsamples": "100"}, "parameters.nsamples"),
        ("kernel_shap", {"nsamples": True}, "parameters.nsamples"),
        ("kernel_shap", {"nsamples": None}, "parameters.nsamples"),
        ("kernel_shap_reference", {"l1_reg": True}, "parameters.l1_reg"),
        ("kernel_shap_reference", {"l1_reg": "num_features(x)"}, "parameters.l1_reg"),
        ("kernel_shap_reference", {"l1_reg": 0}, "parameters.l1_reg"),
        ("kernel_shap", {"background_rows": 0}, "parameters.background_rows"),
        ("kernel_shap", {"tolerance": 0}, "parameters.tolerance"),
        ("kernel_shap", {"tolerance": "small"}, "parameters.tolerance"),
        ("lime", {"discretize_continuous": 1}, "parameters.discretize_continuous"),
        ("exact", {"max_features": 17}, "parameters.max_features"),
        ("permutation", {"seed": -1}, "parameters.seed"),
        ("tree_shap", {"output_space": "logit"}, "parameters.output_space"),
    ],
)
def test_validate_params_refuses_bad_values(method: str, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_params(method, params)
    assert (err.value.code, err.value.field) == ("invalid_parameter", field)


def test_validate_params_refuses_unknown_names_and_methods() -> None:
    with pytest.raises(UnknownField) as err:
        validate_params("lime", {"nsamples": 10})
    assert err.value.field == "parameters.nsamples"
    with pytest.raises(UnknownField):
        validate_params("kernel_shap", {"repeats": 8})  # one run per row now
    with pytest.raises(InvalidRequest) as bad_method:
        validate_params("magic", {})
    assert bad_method.value.code == "unknown_method"


def test_choose_auto_prefers_exact_methods() -> None:
    assert choose_auto(50, True, False, 14)[0] == "tree_shap"
    assert choose_auto(50, False, True, 14)[0] == "linear"
    assert choose_auto(14, False, False, 14)[0] == "exact"
    method, reason = choose_auto(15, False, False, 14)
    assert method == "kernel_shap" and "15 features" in reason


# --------------------------------------------------------------------------- failures


def test_library_and_model_failures_become_explanation_failed(mlp_binary: Model) -> None:
    task = mlp_binary.task("kernel_shap", nsamples=64)

    def broken(z: FloatArray) -> FloatArray:
        if len(z) > len(task.background):
            raise ValueError("model blew up")
        return mlp_binary.f(z)

    failing = ExplainTask(broken, task.X, task.background, task.feature_names, task.output_names, task.targets)
    for method in ("kernel_shap", "exact", "permutation", "lime"):
        with pytest.raises(ExplanationFailed, match="model blew up"):
            get_explainer(method).explain(failing)


@pytest.mark.parametrize("method", ["kernel_shap", "exact", "permutation", "lime", "linear"])
def test_methods_need_background(mlp_binary: Model, method: str) -> None:
    task = mlp_binary.task(method)
    empty = np.empty((0, task.X.shape[1]))
    with pytest.raises(InvalidRequest) as err:
        get_explainer(method).explain(
            ExplainTask(task.f, task.X, empty, task.feature_names, task.output_names, task.targets, task.params)
        )
    assert err.value.code == "background_required"

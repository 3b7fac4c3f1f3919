"""``tree_shap`` against ground truth, on real tree ensembles run by onnxruntime.

Ground truth is (1) a brute-force interventional Shapley computation written
here, through onnxruntime, on the margin graph (the same ensemble with
``post_transform`` NONE), (2) ``shap.TreeExplainer`` on the source model,
and (3) onnxruntime's own outputs for additivity. Hand-made graphs check the
routing of every branch mode at, just above and just below each threshold.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm
import numpy as np
import onnx
import onnxmltools
import onnxruntime as ort
import pytest
import shap
import skl2onnx.common.tree_ensemble as skl2onnx_trees
import xgboost
from onnx import TensorProto, helper, numpy_helper
from onnxmltools.convert.common.data_types import FloatTensorType as MltFloat
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask
from engine.methods.tree_shap import TreeShap
from engine.methods.trees.reader import is_tree_ensemble, load_ensemble, read_ensemble

D = 6  # features: 2^6 coalitions keep the brute force cheap
Fn = Callable[[FloatArray], FloatArray]

# --------------------------------------------------------------------------- helpers


def _f32(a: Any) -> FloatArray:
    """float64 rows holding float32 values, so every model sees the same numbers."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _session(model: onnx.ModelProto, output: str, post_transform: str | None = None) -> Fn:
    """onnxruntime on ``output`` of ``model``, optionally with the ensemble's post_transform replaced."""
    model = copy.deepcopy(model)
    if post_transform is not None:
        node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
        for a in node.attribute:
            if a.name == "post_transform":
                a.s = post_transform.encode()
    if output not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    dtype = np.float64 if source.type == "tensor(double)" else np.float32

    def f(z: FloatArray) -> FloatArray:
        y = session.run([output], {source.name: np.asarray(z, dtype=dtype)})[0]
        return np.asarray(y, dtype=np.float64).reshape(len(z), -1)

    return f


def _task(model: onnx.ModelProto, f: Fn, X: FloatArray, background: FloatArray, **params: Any) -> ExplainTask:
    k = f(X[:1]).shape[1]
    return ExplainTask(
        f=f,
        X=X,
        background=background,
        feature_names=[f"x{i}" for i in range(X.shape[1])],
        output_names=[f"y{i}" for i in range(k)],
        targets=[list(range(k)) for _ in X],
        params={"output_space": "margin", "seed": 0, **params},
        onnx_model=model.SerializeToString(),
    )


def brute_force(f: Fn, X: FloatArray, background: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Interventional Shapley values: v(S) = mean_b f(x_S, b_S̄), every subset S."""
    n, d = X.shape
    masks = np.array(list(itertools.product([False, True], repeat=d)))
    rows = np.where(masks[None, :, None, :], X[:, None, None, :], background[None, None, :, :])
    v = f(rows.reshape(-1, d)).reshape(n, len(masks), len(background), -1).mean(axis=2)
    index = {tuple(m): i for i, m in enumerate(masks)}
    values = np.zeros((n, d, v.shape[2]))
    for i, mask in enumerate(masks):
        size = int(mask.sum())
        for j in np.flatnonzero(~mask):
            weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            values[:, j] += weight * (v[:, index[tuple(mask | (np.arange(d) == j))]] - v[:, i])
    return values, v[0, 0]


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Case:
    """A converted model, its source, and the onnxruntime output the service explains."""

    name: str
    model: onnx.ModelProto
    source: Any
    output: str  # the probability (or regression) tensor
    classifier: bool


@pytest.fixture(scope="module")
def data() -> dict[str, FloatArray]:
    Xc, yc = make_classification(300, D, n_informative=4, random_state=0)
    Xm, ym = make_classification(300, D, n_informative=4, n_classes=3, random_state=1)
    Xr, yr = make_regression(300, D, noise=5, random_state=2)
    return {"Xc": _f32(Xc), "yc": yc, "Xm": _f32(Xm), "ym": ym, "Xr": _f32(Xr), "yr": yr / np.abs(yr).max()}


def _skl(model: Any, X: FloatArray) -> onnx.ModelProto:
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    onx = to_onnx(model, X[:1].astype(np.float32), options=options, target_opset={"": 17, "ai.onnx.ml": 3})
    assert isinstance(onx, onnx.ModelProto)
    return onx


def _mlt(model: Any, booster: str) -> onnx.ModelProto:
    convert = onnxmltools.convert_lightgbm if booster == "lightgbm" else onnxmltools.convert_xgboost
    return convert(model, initial_types=[("x", MltFloat([None, D]))], target_opset=15)  # type: ignore[no-any-return]


def _tensor_output(model: onnx.ModelProto) -> str:
    node = next(n for n in model.graph.node if n.op_type.startswith("TreeEnsemble"))
    return str(node.output[1] if node.op_type == "TreeEnsembleClassifier" else model.graph.output[0].name)


@pytest.fixture(scope="module")
def cases(data: dict[str, FloatArray]) -> dict[str, Case]:
    Xc, yc, Xm, ym, Xr, yr = (data[k] for k in ("Xc", "yc", "Xm", "ym", "Xr", "yr"))
    small: dict[str, Any] = {"max_depth": 3, "random_state": 0}
    sources: dict[str, tuple[Any, str, bool]] = {
        "gb_binary": (GradientBoostingClassifier(n_estimators=12, **small).fit(Xc, yc), "skl", True),
        "gb_multiclass": (GradientBoostingClassifier(n_estimators=5, **small).fit(Xm, ym), "skl", True),
        "rf_regression": (RandomForestRegressor(n_estimators=10, **small).fit(Xr, yr), "skl", False),
        "rf_classifier": (RandomForestClassifier(n_estimators=10, **small).fit(Xc, yc), "skl", True),
        "hgb_binary": (HistGradientBoostingClassifier(max_iter=12, **small).fit(Xc, yc), "skl", True),
        "lgbm_binary": (
            lightgbm.LGBMClassifier(n_estimators=12, num_leaves=8, verbose=-1, **small).fit(Xc, yc),
            "lightgbm",
            True,
        ),
        "lgbm_multiclass": (
            lightgbm.LGBMClassifier(n_estimators=5, num_leaves=8, verbose=-1, **small).fit(Xm, ym),
            "lightgbm",
            True,
        ),
        "xgb_binary": (xgboost.XGBClassifier(n_estimators=12, **small).fit(Xc, yc), "xgboost", True),
        "xgb_regression": (xgboost.XGBRegressor(n_estimators=12, **small).fit(Xr, yr), "xgboost", False),
    }
    out = {}
    with pytest.MonkeyPatch.context() as patch:
        # skl2onnx 1.20 passes a Python bool for HistGradientBoosting leaves' missing-value flag,
        # which onnx 1.23's make_attribute rejects; the flag is an int in ONNX.
        add_node = skl2onnx_trees.add_node

        def int_flag(*args: Any, nodes_missing_value_tracks_true: Any = 0, **kwargs: Any) -> Any:
            return add_node(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

        patch.setattr(skl2onnx_trees, "add_node", int_flag)
        for name, (source, kind, classifier) in sources.items():
            model = _skl(source, Xc) if kind == "skl" else _mlt(source, kind)
            out[name] = Case(name, model, source, _tensor_output(model), classifier)
    return out


def _rows(case: Case, data: dict[str, FloatArray]) -> tuple[FloatArray, FloatArray]:
    """Rows to explain and a 120-row background (over shap's silent 100-row subsampling)."""
    X = data["Xm"] if "multiclass" in case.name else data["Xr"] if "regression" in case.name else data["Xc"]
    return X[:4], X[100:220]


ALL = [
    "gb_binary",
    "gb_multiclass",
    "rf_regression",
    "rf_classifier",
    "hgb_binary",
    "lgbm_binary",
    "lgbm_multiclass",
    "xgb_binary",
    "xgb_regression",
]
CLASSIFIERS = [n for n in ALL if "regression" not in n]

# --------------------------------------------------------------------------- against ground truth


@pytest.mark.parametrize("name", ALL)
def test_margin_is_the_exact_shapley_value_of_the_margin_graph(
    name: str, cases: dict[str, Case], data: dict[str, FloatArray]
) -> None:
    case = cases[name]
    X, background = _rows(case, data)
    margin = _session(case.model, case.output, post_transform="NONE")
    result = TreeShap().explain(_task(case.model, _session(case.model, case.output), X, background))

    truth, base = brute_force(margin, X, background)
    assert result.info == {"output_space": "margin"} and result.std_errors is None
    np.testing.assert_allclose(result.values, truth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.base_values, np.tile(base, (len(X), 1)), rtol=0, atol=1e-6)
    # Additivity against onnxruntime's own margins (onnxruntime sums in float32).
    np.testing.assert_allclose(result.output_values, margin(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.base_values + result.values.sum(axis=1), margin(X), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_probability_adds_up_to_onnxruntime_probabilities(
    name: str, cases: dict[str, Case], data: dict[str, FloatArray]
) -> None:
    case = cases[name]
    X, background = _rows(case, data)
    f = _session(case.model, case.output)
    result = TreeShap().explain(_task(case.model, f, X, background, output_space="probability"))

    assert result.info == {"output_space": "probability"}
    np.testing.assert_allclose(result.output_values, f(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.base_values + result.values.sum(axis=1), f(X), rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.base_values[0], f(background).mean(axis=0), rtol=0, atol=1e-6)


def _shap_on_source(source: Any, X: FloatArray, background: FloatArray, output: str) -> FloatArray:
    masker = shap.maskers.Independent(background, max_samples=len(background))
    explainer = shap.TreeExplainer(source, data=masker, feature_perturbation="interventional", model_output=output)
    return np.asarray(explainer.shap_values(X, check_additivity=False), dtype=np.float64).reshape(len(X), D, -1)


@pytest.mark.parametrize(
    ("name", "space"),
    [("gb_binary", "margin"), ("gb_binary", "probability"), ("rf_regression", "margin"), ("hgb_binary", "margin")],
)
def test_matches_shap_on_the_source_model(
    name: str, space: str, cases: dict[str, Case], data: dict[str, FloatArray]
) -> None:
    """skl2onnx writes the largest float32 ≤ each float64 threshold, so on float32 rows the source
    model (which compares float32(x) ≤ t) routes exactly like the rounded ONNX trees."""
    case = cases[name]
    X, background = _rows(case, data)
    result = TreeShap().explain(_task(case.model, _session(case.model, case.output), X, background, output_space=space))
    expected = _shap_on_source(case.source, X, background, "raw" if space == "margin" else "probability")
    np.testing.assert_allclose(result.values[:, :, -1:], expected, rtol=0, atol=1e-6)
    if case.classifier and space == "margin":
        np.testing.assert_allclose(result.values[:, :, 0], -result.values[:, :, 1], atol=1e-12)


def test_softmax_probability_reduces_to_logistic_rescaling(cases: dict[str, Case], data: dict[str, FloatArray]) -> None:
    """A binary ensemble rewritten as softmax over (0, s) gives shap's logistic probability attributions."""
    case = cases["lgbm_binary"]
    X, background = _rows(case, data)
    softmax = copy.deepcopy(case.model)
    node = next(n for n in softmax.graph.node if n.op_type == "TreeEnsembleClassifier")
    for a in node.attribute:
        if a.name == "class_ids":
            a.ints[:] = [1] * len(a.ints)
        if a.name == "post_transform":
            a.s = b"SOFTMAX"
    f_logistic, f_softmax = _session(case.model, case.output), _session(softmax, case.output)
    np.testing.assert_allclose(f_softmax(X), f_logistic(X), atol=1e-6)
    logistic = TreeShap().explain(_task(case.model, f_logistic, X, background, output_space="probability"))
    split = TreeShap().explain(_task(softmax, f_softmax, X, background, output_space="probability"))
    np.testing.assert_allclose(split.values, logistic.values, rtol=0, atol=1e-9)
    np.testing.assert_allclose(split.base_values + split.values.sum(axis=1), f_softmax(X), rtol=0, atol=1e-6)


def test_per_class_logistic_probability_adds_up(cases: dict[str, Case], data: dict[str, FloatArray]) -> None:
    """Several LOGISTIC columns (one-vs-rest): shap rescales each column on its own."""
    case = cases["gb_multiclass"]
    model = copy.deepcopy(case.model)
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleClassifier")
    next(a for a in node.attribute if a.name == "post_transform").s = b"LOGISTIC"
    X, background = _rows(case, data)
    f = _session(model, case.output)
    result = TreeShap().explain(_task(model, f, X, background, output_space="probability"))
    np.testing.assert_allclose(result.base_values + result.values.sum(axis=1), f(X), rtol=0, atol=1e-6)


def test_an_l1_normalizer_after_a_forest_is_folded_in(data: dict[str, FloatArray]) -> None:
    Xm, ym = data["Xm"], data["ym"]
    model = _skl(RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(Xm, ym), Xm)
    probabilities = _tensor_output(model)
    model.graph.node.append(
        helper.make_node("Normalizer", [probabilities], ["normalized"], domain="ai.onnx.ml", norm="L1")
    )
    f = _session(model, "normalized")
    X, background = Xm[:3], Xm[100:130]
    result = TreeShap().explain(_task(model, f, X, background, output_space="probability"))
    truth, _ = brute_force(f, X, background)
    np.testing.assert_allclose(result.values, truth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.output_values, f(X), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- branch modes


def _regressor(
    splits: list[tuple[str, float, int]],
    *,
    dtype: int = TensorProto.FLOAT,
    cast_from: int | None = None,
    missing_true: bool = False,
) -> onnx.ModelProto:
    """A one-tree TreeEnsembleRegressor: a chain of splits on x0, leaf weights 1, 2, 3, …

    Split i tests ``splits[i]`` (mode, threshold, feature); its true branch is
    leaf ``i`` and its false branch the next split (the last one's: a leaf).
    """
    n = len(splits)
    modes, values, features, true, false = [], [], [], [], []
    for i, (mode, threshold, feature) in enumerate(splits):
        modes.append(mode)
        values.append(threshold)
        features.append(feature)
        true.append(n + i)
        false.append(i + 1 if i + 1 < n else 2 * n)
    modes += ["LEAF"] * (n + 1)
    values += [0.0] * (n + 1)
    features += [0] * (n + 1)
    true += [0] * (n + 1)
    false += [0] * (n + 1)
    ids = list(range(2 * n + 1))
    as_tensor = dtype == TensorProto.DOUBLE
    attrs: dict[str, Any] = {
        "nodes_treeids": [0] * len(ids),
        "nodes_nodeids": ids,
        "nodes_featureids": features,
        "nodes_modes": modes,
        "nodes_truenodeids": true,
        "nodes_falsenodeids": false,
        "nodes_missing_value_tracks_true": [int(missing_true)] * len(ids),
        "target_treeids": [0] * (n + 1),
        "target_nodeids": list(range(n, 2 * n + 1)),
        "target_ids": [0] * (n + 1),
        "n_targets": 1,
    }
    weights = [float(w) for w in range(1, n + 2)]
    if as_tensor:
        attrs["nodes_values_as_tensor"] = numpy_helper.from_array(np.array(values, np.float64))
        attrs["target_weights_as_tensor"] = numpy_helper.from_array(np.array(weights, np.float64))
    else:
        attrs["nodes_values"], attrs["target_weights"] = values, weights
    nodes = [helper.make_node("TreeEnsembleRegressor", ["z"], ["y"], domain="ai.onnx.ml", **attrs)]
    source = "z"
    if cast_from is not None:
        nodes.insert(0, helper.make_node("Cast", ["x"], ["z"], to=dtype))
        source = "x"
    graph = helper.make_graph(
        nodes,
        "tree",
        [helper.make_tensor_value_info(source, cast_from or dtype, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])


def _around(thresholds: list[float], dtype: type[np.floating[Any]]) -> FloatArray:
    """Each threshold rounded to ``dtype``, one ulp below and one above, plus NaN; x1 = 0."""
    points: list[float] = [np.nan]
    for t in thresholds:
        v = dtype(t)
        points += [float(np.nextafter(v, dtype(-np.inf))), float(v), float(np.nextafter(v, dtype(np.inf)))]
        points += [t]
    return np.array([[p, 0.0] for p in points])


MODES = ["BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ"]
THRESHOLDS = [0.1, -1.5, 2.0000002, 1e-39]  # not float32, float32, float32, subnormal


def _assert_routes_like_onnxruntime(model: onnx.ModelProto, X: FloatArray) -> None:
    ensemble = read_ensemble(model.SerializeToString())
    expected = _session(model, "y")(X)
    np.testing.assert_array_equal(ensemble.outputs(ensemble.prepare(X)), expected)


@pytest.mark.parametrize("missing_true", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_every_branch_mode_routes_like_onnxruntime(mode: str, missing_true: bool) -> None:
    model = _regressor([(mode, t, 0) for t in THRESHOLDS], missing_true=missing_true)
    _assert_routes_like_onnxruntime(model, _around(THRESHOLDS, np.float32))


@pytest.mark.parametrize("mode", MODES)
def test_double_inputs_route_in_double_with_tensor_thresholds(mode: str) -> None:
    thresholds = [0.1, -1.5, 1 / 3]
    model = _regressor([(mode, t, 0) for t in thresholds], dtype=TensorProto.DOUBLE)
    assert read_ensemble(model.SerializeToString()).casts == (np.float64,)
    _assert_routes_like_onnxruntime(model, _around(thresholds, np.float64))


def test_a_cast_before_the_trees_rounds_like_onnxruntime() -> None:
    model = _regressor([("BRANCH_LT", 0.1, 0), ("BRANCH_LEQ", 1 / 3, 0)], cast_from=TensorProto.DOUBLE)
    X = _around([0.1, 1 / 3], np.float64)  # double rows between float32 neighbours
    assert read_ensemble(model.SerializeToString()).casts == (np.float64, np.float32)
    _assert_routes_like_onnxruntime(model, X)


@pytest.mark.parametrize("mode", ["BRANCH_EQ", "BRANCH_NEQ", "BRANCH_GTE"])
def test_categorical_splits_are_explained_exactly(mode: str) -> None:
    """Category codes as floats: x0 == 1, then x1 == 2 (as rewritten ≤ splits, subtrees copied)."""
    model = _regressor([(mode, 1.0, 0), (mode, 2.0, 1), ("BRANCH_LEQ", 0.5, 0)])
    rng = np.random.default_rng(0)
    X, background = rng.integers(0, 4, (6, 2)).astype(float), rng.integers(0, 4, (30, 2)).astype(float)
    f = _session(model, "y")
    result = TreeShap().explain(_task(model, f, X, background))
    truth, base = brute_force(f, X, background)
    np.testing.assert_allclose(result.values, truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(result.base_values[0], base, atol=1e-9)


def _as_opset5(model: onnx.ModelProto, members: dict[int, list[float]]) -> onnx.ModelProto:
    """Re-encode a one-target TreeEnsembleRegressor as TreeEnsemble; ``members`` turns splits into sets."""
    node = next(n for n in model.graph.node if n.op_type == "TreeEnsembleRegressor")
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    inner = [i for i, m in enumerate(a["nodes_modes"]) if m != b"LEAF"]
    leaves = {nid: j for j, nid in enumerate(a["target_nodeids"])}
    position = {nid: i for i, nid in enumerate(inner)}
    codes = {m: i for i, m in enumerate(MODES)}

    def child(nid: int) -> tuple[int, int]:
        return (leaves[nid], 1) if nid in leaves else (position[nid], 0)

    trues, falses = (
        [child(a["nodes_truenodeids"][i]) for i in inner],
        [child(a["nodes_falsenodeids"][i]) for i in inner],
    )
    modes = [6 if i in members else codes[a["nodes_modes"][i].decode()] for i in inner]
    member_values = [v for i in inner if i in members for v in [*members[i], np.nan]]
    attrs = {
        "n_targets": 1,
        "tree_roots": [0],
        "nodes_modes": numpy_helper.from_array(np.array(modes, np.uint8)),
        "nodes_featureids": [a["nodes_featureids"][i] for i in inner],
        "nodes_splits": numpy_helper.from_array(np.array([a["nodes_values"][i] for i in inner], np.float32)),
        "nodes_truenodeids": [t for t, _ in trues],
        "nodes_trueleafs": [leaf for _, leaf in trues],
        "nodes_falsenodeids": [f for f, _ in falses],
        "nodes_falseleafs": [leaf for _, leaf in falses],
        "leaf_targetids": a["target_ids"],
        "leaf_weights": numpy_helper.from_array(np.array(a["target_weights"], np.float32)),
    }
    if member_values:
        attrs["membership_values"] = numpy_helper.from_array(np.array(member_values, np.float32))
    graph = copy.deepcopy(model.graph)
    graph.ClearField("node")
    graph.node.append(helper.make_node("TreeEnsemble", ["z"], ["y"], domain="ai.onnx.ml", **attrs))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)])


@pytest.mark.parametrize("mode", MODES)
def test_opset5_tree_ensemble_routes_like_onnxruntime(mode: str) -> None:
    legacy = _regressor([(mode, t, 0) for t in THRESHOLDS])
    model = _as_opset5(legacy, {})
    X = _around(THRESHOLDS, np.float32)
    np.testing.assert_array_equal(_session(model, "y")(X), _session(legacy, "y")(X))
    _assert_routes_like_onnxruntime(model, X)


def test_opset5_set_membership_is_explained_exactly() -> None:
    members = [1.0, 2.0, float(np.nextafter(np.float32(2), np.float32(3))), 5.0]
    model = _as_opset5(_regressor([("BRANCH_LEQ", 0.0, 0), ("BRANCH_LEQ", 0.5, 1)]), {0: members})
    X = _around([*members, 3.0], np.float32)
    _assert_routes_like_onnxruntime(model, X)
    rng = np.random.default_rng(1)
    rows, background = rng.integers(0, 6, (5, 2)).astype(float), rng.integers(0, 6, (20, 2)).astype(float)
    f = _session(model, "y")
    result = TreeShap().explain(_task(model, f, rows, background))
    truth, _ = brute_force(f, rows, background)
    np.testing.assert_allclose(result.values, truth, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- what is and is not a tree model


def test_tree_ensembles_are_recognised(cases: dict[str, Case]) -> None:
    for case in cases.values():
        assert is_tree_ensemble(case.model.SerializeToString()), case.name
    ensemble = load_ensemble(cases["gb_binary"].model.SerializeToString())
    assert ensemble is not None and ensemble.single_column_binary and ensemble.post_transform == "LOGISTIC"
    forest = load_ensemble(cases["rf_classifier"].model.SerializeToString())
    assert forest is not None and forest.post_transform == "NONE"
    np.testing.assert_array_equal(forest.offset, [1.0, 0.0])  # onnxruntime writes (1 − s, s)


def test_graphs_that_are_not_plain_tree_ensembles_are_refused(data: dict[str, FloatArray]) -> None:
    Xc, yc = data["Xc"], data["yc"]
    scaled = _skl(make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=3)).fit(Xc, yc), Xc)
    linear = _skl(LogisticRegression().fit(Xc, yc), Xc)
    for model in (scaled, linear):
        assert not is_tree_ensemble(model.SerializeToString())
        assert load_ensemble(model.SerializeToString()) is None
        task = _task(model, _session(model, "probabilities"), Xc[:2], Xc[100:110])
        with pytest.raises(InvalidRequest) as caught:
            TreeShap().explain(task)
        assert caught.value.code == "method_not_applicable"
        assert "kernel_shap" in caught.value.detail


def test_probability_of_a_regressor_is_an_invalid_parameter(
    cases: dict[str, Case], data: dict[str, FloatArray]
) -> None:
    case = cases["rf_regression"]
    X, background = _rows(case, data)
    with pytest.raises(InvalidRequest) as caught:
        TreeShap().explain(
            _task(case.model, _session(case.model, case.output), X, background, output_space="probability")
        )
    assert caught.value.code == "invalid_parameter"


def test_an_explainer_never_shares_arrays_with_the_ensemble(
    cases: dict[str, Case], data: dict[str, FloatArray]
) -> None:
    """shap overwrites node_sample_weight in place: two runs on one ensemble must agree."""
    case = cases["gb_binary"]
    X, background = _rows(case, data)
    task = _task(case.model, _session(case.model, case.output), X, background)
    first: Attributions = TreeShap().explain(task)
    second = TreeShap().explain(_task(case.model, task.f, X, background[:7]))
    third = TreeShap().explain(task)
    assert not np.allclose(first.values, second.values)
    np.testing.assert_array_equal(first.values, third.values)

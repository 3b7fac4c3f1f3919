"""Anchors on a real logistic-regression ONNX model: the reported precision bounds hold on held-out rows."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from engine.methods import validate_params
from engine.methods.anchors import Anchors, kl_bounds
from engine.methods.base import ExplainTask
from tests import builders


@pytest.fixture(scope="module")
def credit() -> builders.TableModel:
    return builders.credit_logistic()


def model_fn(built: builders.BuiltModel):
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def f(X: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.asarray(X, dtype=np.float32)})[-1], dtype=np.float64)

    return f


def satisfies(conditions: list[dict], names: list[str], categories: list[str], X: np.ndarray) -> np.ndarray:
    ok = np.ones(len(X), dtype=bool)
    for c in conditions:
        j = names.index(c["feature"])
        if c["op"] == "==":
            ok &= X[:, j] == categories.index(c["value"])
            continue
        if c["low"] is not None:
            ok &= X[:, j] > c["low"]
        if c["high"] is not None:
            ok &= X[:, j] <= c["high"]
    return ok


def test_precision_on_held_out_rows_is_within_the_reported_bounds(credit):
    f = model_fn(credit)
    names = ["income", "debt", "age", "sex", "housing"]
    categories = credit.card["features"][4]["categories"]
    background = builders.credit_rows(3000, np.random.default_rng(1))
    held_out = builders.credit_rows(60_000, np.random.default_rng(2))
    predicted_held_out = f(held_out).argmax(axis=1)
    X = credit.X[300:304]
    params = {**validate_params("anchors", {"seed": 4}), "categories": {"housing": categories}}
    task = ExplainTask(
        f=f,
        X=X,
        background=background,
        feature_names=names,
        output_names=["denied", "approved"],
        targets=[[0]] * len(X),
        params=params,
        seed=4,
        categorical=(4,),
    )
    result = Anchors().explain(task)
    assert np.all(result.values == 0)
    for i, x in enumerate(X):
        anchor = result.quality[i]["anchor"]
        label = ["denied", "approved"].index(anchor["label"])
        assert label == int(f(x[None]).argmax())
        assert satisfies(anchor["conditions"], names, categories, x[None])[0], "the rule holds for its row"
        covered = satisfies(anchor["conditions"], names, categories, held_out)
        measured = float(np.mean(predicted_held_out[covered] == label))
        low, high = anchor["precision_bounds"]
        assert low <= measured <= high, (anchor, measured)
        assert abs(float(covered.mean()) - anchor["coverage"]) < 0.03
        assert anchor["confidence"] == pytest.approx(0.95)
        if anchor["threshold_met"]:
            assert anchor["precision"] >= low >= 0.0


def test_same_seed_same_rule(credit):
    f = model_fn(credit)
    background = builders.credit_rows(500, np.random.default_rng(1))
    task = ExplainTask(
        f=f,
        X=credit.X[:2],
        background=background,
        feature_names=["income", "debt", "age", "sex", "housing"],
        output_names=["denied", "approved"],
        targets=[[0], [0]],
        params=validate_params("anchors", {"seed": 9, "max_samples": 3000}),
        seed=9,
        categorical=(4,),
    )
    assert Anchors().explain(task).quality == Anchors().explain(task).quality


def test_kl_bounds_contain_the_mean_and_shrink_with_samples():
    low, high = kl_bounds(np.array([0.9, 0.9]), np.log(2 / 0.05) / np.array([100.0, 10_000.0]))
    assert np.all(low < 0.9) and np.all(high > 0.9)
    assert high[1] - low[1] < high[0] - low[0]

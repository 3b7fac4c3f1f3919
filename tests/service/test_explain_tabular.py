"""Mixed-type tabular models, one-hot groups and robust numerics, over HTTP with real workers."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tests import builders
from tests.conftest import upload
from tests.shapley import brute_force_shapley

REGIONS, PLANS = ["north", "south", "east"], ["basic", "plus"]


@pytest.fixture(scope="module")
def mixed_model() -> dict:
    """A ColumnTransformer + OneHotEncoder + LogisticRegression pipeline with string inputs."""
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "age": rng.uniform(18, 80, n),
            "income": rng.lognormal(10, 0.4, n),
            "region": rng.choice(REGIONS, n),
            "plan": rng.choice(PLANS, n),
        }
    )
    y = ((frame.age > 40).astype(int) ^ (frame.region == "south").astype(int)).to_numpy()
    pipe = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["age", "income"]), ("cat", OneHotEncoder(), ["region", "plan"])]),
        LogisticRegression(),
    ).fit(frame, y)
    initial = [
        ("age", FloatTensorType([None, 1])),
        ("income", FloatTensorType([None, 1])),
        ("region", StringTensorType([None, 1])),
        ("plan", StringTensorType([None, 1])),
    ]
    onx = to_onnx(
        pipe, initial_types=initial, options={id(pipe): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    card = {
        "name": "mixed",
        "task": "classification",
        "class_names": ["stay", "churn"],
        "features": [
            "age",
            "income",
            {"name": "region", "type": "categorical", "categories": REGIONS},
            {"name": "plan", "type": "categorical", "categories": PLANS},
        ],
    }
    return {"onnx": onx.SerializeToString(), "card": card, "frame": frame, "pipe": pipe}


def _register(client, onnx_bytes: bytes, card: dict, background: bytes):
    return client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(onnx_bytes), "m"),
            "card": json.dumps(card),
            "background": (io.BytesIO(background), "b"),
        },
        content_type="multipart/form-data",
    )


def _sums(target: dict) -> float:
    return sum(a["attribution"] for a in target["attributions"])


def test_mixed_pipeline_predicts_and_explains_per_raw_feature(live_client, mixed_model):
    """String categoricals: rows keyed by name, predictions equal sklearn, attributions per raw feature add up."""
    background = mixed_model["frame"].head(40).to_csv(index=False).encode()
    response = _register(live_client, mixed_model["onnx"], mixed_model["card"], background)
    assert response.status_code == 201, response.json
    rows = mixed_model["frame"].iloc[200:203].to_dict(orient="records")
    predicted = live_client.post("/v1/models/mixed:predict", json={"instances": rows}).json["predictions"]
    expected = mixed_model["pipe"].predict_proba(mixed_model["frame"].iloc[200:203])
    got = np.array([[p["scores"]["stay"], p["scores"]["churn"]] for p in predicted])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    for method in ("exact", "kernel_shap"):
        result = live_client.post(
            "/v1/models/mixed:explain", json={"instances": rows, "method": method, "targets": ["churn"]}
        )
        assert result.status_code == 200, result.json
        for i, explanation in enumerate(result.json["explanations"]):
            target = explanation["targets"][0]
            assert [a["feature"] for a in target["attributions"]] == ["age", "income", "region", "plan"]
            assert target["attributions"][2]["value"] == rows[i]["region"]
            assert target["output_value"] - target["base_value"] == pytest.approx(_sums(target), abs=1e-6)
            assert target["output_value"] == pytest.approx(explanation["prediction"]["scores"]["churn"], abs=1e-6)
    unknown = live_client.post("/v1/models/mixed:predict", json={"instances": [{**rows[0], "region": "mars"}]})
    assert unknown.status_code == 422 and unknown.json["code"] == "unknown_category"
    assert unknown.json["field"] == "instances[0].region"


def test_one_hot_group_is_one_feature(live_client):
    """A card's one-hot encoded categorical is explained as one feature, matching brute force over raw features."""
    w = [0.7, 1.5, -2.0, 0.25]  # x, then colour one-hot (red, green, blue)
    model = builders.affine_regressor(w, bias=0.1)
    card = {
        "name": "onehot",
        "task": "regression",
        "features": [
            "x",
            {"name": "colour", "type": "categorical", "categories": ["red", "green", "blue"], "encoding": "one_hot"},
        ],
    }
    rng = np.random.default_rng(1)
    bg = pd.DataFrame({"x": rng.normal(size=30).round(3), "colour": rng.choice(["red", "green", "blue"], 30)})
    response = _register(live_client, model.SerializeToString(), card, bg.to_csv(index=False).encode())
    assert response.status_code == 201, response.json
    result = live_client.post(
        "/v1/models/onehot:explain", json={"instances": [{"x": 2.0, "colour": "blue"}], "method": "exact"}
    ).json
    target = result["explanations"][0]["targets"][0]
    assert [a["feature"] for a in target["attributions"]] == ["x", "colour"]
    codes = {"red": 0, "green": 1, "blue": 2}
    raw_bg = np.column_stack([bg.x, bg.colour.map(codes)]).astype(float)

    def f(raw: np.ndarray) -> np.ndarray:
        onehot = np.eye(3)[raw[:, 1].astype(int)]
        return (raw[:, :1] * w[0] + onehot @ np.array(w[1:]) + 0.1).reshape(-1, 1)

    base, phi = brute_force_shapley(f, np.array([2.0, 2.0]), raw_bg)
    got = [a["attribution"] for a in target["attributions"]]
    np.testing.assert_allclose(got, phi[:, 0], atol=1e-5)
    assert abs(target["quality"]["additivity_residual"]) < 1e-5


def test_constant_background_feature_is_flagged_and_zero(live_client, regression_model):
    """A feature constant in the background is flagged, and gets exactly 0 when the row has that value."""
    background = pd.DataFrame(regression_model.X[:30], columns=["rooms", "area", "distance"])
    background["area"] = 5.0
    response = _register(
        live_client,
        regression_model.onnx_bytes,
        {**regression_model.card, "name": "constant"},
        background.to_csv(index=False).encode(),
    )
    assert response.status_code == 201
    row = [1.0, 5.0, -0.5]
    for method in ("exact", "kernel_shap"):
        result = live_client.post("/v1/models/constant:explain", json={"instances": [row], "method": method}).json
        assert result["parameters"]["background"]["constant_features"] == ["area"]
        assert result["explanations"][0]["targets"][0]["attributions"][1]["attribution"] == 0.0


def test_cost_is_bounded_before_queuing(live_client, binary_model):
    """A request estimated over the evaluation cap is 422 too_expensive with a hint."""
    upload(live_client, binary_model, name="costly")
    rows = binary_model.X[:100].tolist()
    response = live_client.post(
        "/v1/models/costly:explain",
        json={"instances": rows, "method": "kernel_shap", "parameters": {"nsamples": 100000}},
    )
    assert response.status_code == 422 and response.json["code"] == "too_expensive"
    assert "fewer rows" in response.json["detail"]
    too_many = live_client.post("/v1/models/costly:explain", json={"instances": binary_model.X[:101].tolist()})
    assert too_many.status_code == 422 and too_many.json["code"] == "too_many_rows"


def test_non_finite_background_is_rejected(live_client, binary_model):
    """A background with NaN is 422 naming its row and column."""
    csv = b"income,age,debt,tenure\n1,2,3,4\n1,2,,4\n"
    response = _register(live_client, binary_model.onnx_bytes, binary_model.card, csv)
    assert response.status_code == 422 and response.json["code"] == "non_finite"
    assert response.json["field"] == "background[1].debt"


def test_nondeterministic_model_is_flagged_degraded(live_client):
    """A model with random noise breaks local accuracy; the answer says degraded instead of passing as sound."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 2.0])
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("RandomUniformLike", ["xw"], ["noise"], low=0.0, high=10.0),
        helper.make_node("Add", ["xw", "noise"], ["y"]),
    ]
    model = builders.helper_model(nodes, initializers=[w])
    response = _register(
        live_client,
        model.SerializeToString(),
        {"name": "noisy", "task": "regression", "features": ["a", "b"]},
        b"a,b\n0,0\n1,1\n2,0\n",
    )
    assert response.status_code == 201, response.json
    result = live_client.post("/v1/models/noisy:explain", json={"instances": [[1.0, 1.0]], "method": "exact"}).json
    assert result["explanations"][0]["targets"][0]["quality"]["degraded"] is True


@pytest.mark.parametrize("method", ["kernel_shap", "exact", "permutation", "lime"])
def test_same_shape_for_every_task(live_client, binary_model, multiclass_model, regression_model, method):
    """Regression, binary and multiclass answers share one shape: rows → targets → one attribution per feature."""
    for built in (binary_model, multiclass_model, regression_model):
        name = f"shape-{built.card['name']}"
        upload(live_client, built, name=name)
        result = live_client.post(
            f"/v1/models/{name}:explain",
            json={"instances": built.X[:2].tolist(), "method": method, "parameters": {"seed": 1}},
        )
        assert result.status_code == 200, result.json
        assert len(result.json["explanations"]) == 2
        for explanation in result.json["explanations"]:
            assert len(explanation["targets"]) == 1
            target = explanation["targets"][0]
            assert len(target["attributions"]) == len(built.card["features"])
            assert {"base_value", "output_value", "quality"} <= set(target)

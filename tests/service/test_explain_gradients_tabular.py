"""Integrated gradients and saliency of a differentiable tabular model (a torch MLP) over HTTP, real workers.

IG's completeness is checked against onnxruntime (the output minus the baseline's output), saliency against
finite differences through onnxruntime; trees asking for gradients get the 422 naming the operator.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from tests import builders, deep_models
from tests.conftest import upload


def _register(client, onnx_bytes: bytes, X: np.ndarray, name: str):
    names = [f"x{j}" for j in range(X.shape[1])]
    card = {"name": name, "task": "classification", "class_names": ["no", "yes"], "features": names}
    background = pd.DataFrame(X[:40], columns=names).to_csv(index=False).encode()
    data = {
        "model": (io.BytesIO(onnx_bytes), "model.onnx"),
        "card": json.dumps(card),
        "background": (io.BytesIO(background), "background.csv"),
    }
    return client.post("/v1/models", data=data, content_type="multipart/form-data")


@pytest.fixture(scope="module")
def mlp():
    pytest.importorskip("captum")
    return deep_models.tabular_mlp()


def test_integrated_gradients_of_an_mlp_is_complete_over_http(live_client, mlp):
    onnx_bytes, X, _ = mlp
    response = _register(live_client, onnx_bytes, X, "mlp-ig")
    assert response.status_code == 201, response.json
    listed = {m["name"]: m for m in response.json["methods"]}
    assert listed["integrated_gradients"]["applies"] and listed["saliency"]["applies"]
    rows = X[100:103].tolist()
    body = {"instances": rows, "method": "integrated_gradients", "targets": ["no", "yes"], "wait": 60}
    answer = live_client.post("/v1/models/mlp-ig:explain", json=body)
    assert answer.status_code == 200, answer.json
    f = deep_models.session(onnx_bytes)
    baseline = X[:40].mean(axis=0)
    at_base = f.run(None, {"x": baseline[None].astype(np.float32)})[0][0]
    for row, explanation in zip(rows, answer.json["explanations"], strict=True):
        out = f.run(None, {"x": np.asarray([row], dtype=np.float32)})[0][0]
        for k, target in enumerate(explanation["targets"]):
            total = sum(a["attribution"] for a in target["attributions"])
            assert target["base_value"] == pytest.approx(float(at_base[k]), abs=1e-5)
            assert target["output_value"] == pytest.approx(float(out[k]), abs=1e-5)
            delta = abs(target["quality"]["convergence_delta"])
            # Completeness: the attributions add up to f(x) - f(baseline), within Captum's own delta.
            assert abs(total - (out[k] - at_base[k])) <= delta + 1e-3
            assert abs(target["quality"]["additivity_residual"]) <= delta + 1e-3
            assert "degraded" not in target["quality"]
    assert answer.json["parameters"]["baseline"] == "background"
    assert answer.json["parameters"]["conversion"]["max_abs_diff"] <= 1e-4


def test_saliency_of_an_mlp_is_the_signed_gradient_and_not_additive(live_client, mlp):
    onnx_bytes, X, _ = mlp
    assert _register(live_client, onnx_bytes, X, "mlp-saliency").status_code == 201
    body = {"instances": [X[7].tolist()], "method": "saliency", "targets": ["yes"], "wait": 60}
    answer = live_client.post("/v1/models/mlp-saliency:explain", json=body)
    assert answer.status_code == 200, answer.json
    (target,) = answer.json["explanations"][0]["targets"]
    assert "base_value" not in target and "additivity_residual" not in target["quality"]
    sess = deep_models.session(onnx_bytes)

    def p(x: np.ndarray) -> float:
        return float(sess.run(None, {"x": x[None].astype(np.float32)})[0][0, 1])

    eps = 1e-2
    numeric = [(p(X[7] + eps * e) - p(X[7] - eps * e)) / (2 * eps) for e in np.eye(4)]
    np.testing.assert_allclose([a["attribution"] for a in target["attributions"]], numeric, atol=2e-3, rtol=2e-2)


def test_auto_picks_integrated_gradients_for_a_wide_mlp_and_says_why(live_client):
    pytest.importorskip("captum")
    onnx_bytes, X, _ = deep_models.tabular_mlp(features=20)
    assert _register(live_client, onnx_bytes, X, "mlp-wide").status_code == 201
    answer = live_client.post("/v1/models/mlp-wide:explain", json={"instances": [X[0].tolist()], "wait": 60})
    assert answer.status_code == 200, answer.json
    assert answer.json["method"] == "integrated_gradients"
    assert "differentiable" in answer.json["method_reason"]


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_a_tree_model_asking_for_gradients_gets_422_naming_the_operator(client, method):
    forest = builders.forest_classifier()
    assert upload(client, forest).status_code == 201
    listed = {m["name"]: m for m in client.get("/v1/models/forest").json["methods"]}
    assert not listed[method]["applies"] and "TreeEnsemble" in listed[method]["reason"]
    row = forest.X[0].tolist()
    response = client.post("/v1/models/forest:explain", json={"instances": [row], "method": method})
    assert response.status_code == 422
    assert response.json["code"] == "method_not_supported_for_model" and response.json["field"] == "method"
    assert "TreeEnsemble" in response.json["detail"]

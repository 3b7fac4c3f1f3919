"""``GET /v1/models/{name}/surrogate``: a job first, then kept; its fidelity recomputed independently."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pandas as pd

from tests import builders
from tests.conftest import poll


def predict(built: builders.BuiltModel, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(X, dtype=np.float32)})[-1], dtype=np.float64)


def apply_tree(nodes: list[dict], names: list[str], x: np.ndarray):
    i = 0
    while not nodes[i]["leaf"]:
        node = nodes[i]
        i = node["left"] if x[names.index(node["feature"])] <= node["threshold"] else node["right"]
    return nodes[i]["value"]


def register(client, built: builders.TableModel, name: str, rows: int) -> None:
    data = {
        "model": (io.BytesIO(built.onnx_bytes), "model.onnx"),
        "card": built.card_json(name=name),
        "background": (io.BytesIO(built.background_csv(rows)), "background.csv"),
    }
    assert client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201


def test_surrogate_is_a_job_then_kept_and_its_fidelity_recomputes(live_client):
    credit = builders.credit_logistic()
    register(live_client, credit, "surrogated", rows=200)
    first = live_client.get("/v1/models/surrogated/surrogate?wait=0")
    assert first.status_code in (200, 202)
    if first.status_code == 202:
        job = poll(live_client, first.headers["Location"])
        assert job["status"] == "succeeded", job
        assert job["kind"] == "surrogate"
    again = live_client.get("/v1/models/surrogated/surrogate")
    assert again.status_code == 200
    surrogate = again.json
    assert surrogate["kind"] == "classifier" and surrogate["depth"] <= 3
    assert "income" in surrogate["rules"]
    names = ["income", "debt", "age", "sex", "housing"]
    X = credit.X[:200]
    labels = np.array(["denied", "approved"])[predict(credit, X).argmax(axis=1)]
    held = surrogate["held_out_rows"]
    assert len(held) == surrogate["fidelity"]["rows"]["held_out"] == 60
    agreement = np.mean([apply_tree(surrogate["nodes"], names, X[i]) == labels[i] for i in held])
    assert surrogate["fidelity"]["metric"] == "accuracy"
    assert surrogate["fidelity"]["held_out"] == agreement
    assert surrogate["fidelity"]["held_out"] > 0.7


def test_regression_surrogate_reports_r2(live_client, regression_model):
    frame = pd.DataFrame(regression_model.X[:100], columns=["rooms", "area", "distance"])
    data = {
        "model": (io.BytesIO(regression_model.onnx_bytes), "model.onnx"),
        "card": regression_model.card_json(name="surrogate-price"),
        "background": (io.BytesIO(frame.to_csv(index=False).encode()), "background.csv"),
    }
    assert live_client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201
    response = live_client.get("/v1/models/surrogate-price/surrogate?wait=30&max_depth=4")
    assert response.status_code == 200, response.json
    surrogate = response.json
    assert surrogate["fidelity"]["metric"] == "r2"
    values = predict(regression_model, regression_model.X[:100])[:, 0]
    held = surrogate["held_out_rows"]
    fitted = np.array(
        [apply_tree(surrogate["nodes"], ["rooms", "area", "distance"], regression_model.X[i]) for i in held]
    )
    truth = values[held]
    r2 = 1 - np.sum((truth - fitted) ** 2) / np.sum((truth - truth.mean()) ** 2)
    assert abs(surrogate["fidelity"]["held_out"] - r2) < 1e-9


def test_bad_queries_and_no_background_are_422(client, binary_model):
    from tests.conftest import upload

    upload(client, binary_model, name="surrogate-bad", background=False)
    response = client.get("/v1/models/surrogate-bad/surrogate")
    assert response.status_code == 422 and response.json["code"] == "background_required"
    assert client.get("/v1/models/surrogate-bad/surrogate?max_depth=99").json["field"] == "max_depth"
    assert client.get("/v1/models/surrogate-bad/surrogate?colour=red").json["code"] == "unknown_field"

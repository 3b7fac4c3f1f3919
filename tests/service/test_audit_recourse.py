"""Recourse in audits: per-group burden of changing a decision, checked against an independent computation."""

from __future__ import annotations

import io
import json
from html import unescape

import numpy as np
import onnxruntime as ort
import pandas as pd

from tests import builders
from tests.conftest import poll, upload


def predict(built: builders.BuiltModel, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(X, dtype=np.float32)})[-1], dtype=np.float64)


def submit(client, frame, spec):
    data = {"dataset": (io.BytesIO(frame.to_csv(index=False).encode()), "data.csv"), "spec": json.dumps(spec)}
    return client.post("/v1/audits", data=data, content_type="multipart/form-data")


def test_recourse_costs_more_for_the_disadvantaged_group(live_client):
    """A planted sex bias, sex immutable: group B (sex = 1) needs larger changes, as computed here by hand."""
    credit = builders.credit_logistic(name="recourse-bias", sex_bias=2.0)
    assert upload(live_client, credit).status_code == 201
    X = builders.credit_rows(160, np.random.default_rng(5))
    frame = credit.frame(X)
    frame["gender"] = np.where(X[:, 3] == 1, "B", "A")
    ranges = {"income": [0, 200_000], "debt": [0, 100_000]}
    spec = {
        "model": "recourse-bias",
        "method": "linear",
        "sensitive": ["gender"],
        "recourse": {"constraints": {"immutable": ["sex", "age", "housing"], "ranges": ranges}, "samples": 100},
    }
    response = submit(live_client, frame, spec)
    assert response.status_code == 202, response.json
    audit = poll(live_client, response.headers["Location"])
    assert audit["status"] == "succeeded", audit
    recourse = audit["summary"]["recourse"]

    # Independently: the analytic cheapest move of income (up) or debt (down) to the linear boundary.
    background = credit.X[:50]
    scale = np.median(np.abs(background - np.median(background, axis=0)), axis=0)
    weights, bias = credit.extra["logit"]
    denied = np.flatnonzero(predict(credit, X).argmax(axis=1) == 0)
    analytic = {}
    for i in denied:
        z = float(weights @ X[i] + bias)
        moves = []
        for j, (low, high) in ((0, ranges["income"]), (1, ranges["debt"])):
            delta = -z / weights[j]
            if low <= X[i, j] + delta <= high:
                moves.append(abs(delta) / scale[j])
        analytic[int(i)] = min(moves) if moves else None
    assert recourse["rows_unwanted"] == recourse["rows_searched"] == len(denied)
    for item in recourse["rows"]:
        expected = analytic[item["row"]]
        assert item["found"] == (expected is not None)
        if expected is not None:
            assert 0.99 * expected <= item["cost"] <= 1.10 * expected
    groups = recourse["groups"]["gender"]["groups"]
    for name, sex in (("A", 0.0), ("B", 1.0)):
        costs = [analytic[i] for i in denied if X[i, 3] == sex and analytic[int(i)] is not None]
        assert groups[name]["rows"] == int(np.sum(X[denied, 3] == sex))
        assert groups[name]["median_cost"] == np.float64(groups[name]["median_cost"])
        assert abs(groups[name]["median_cost"] - float(np.median(costs))) <= 0.10 * float(np.median(costs))
    assert groups["B"]["median_cost"] > groups["A"]["median_cost"]
    assert "median_cost_ratio" in recourse["groups"]["gender"]["flags"]
    assert recourse["flagged"] == ["gender"]
    assert recourse["surrogate"]["rows"] == "audit"

    report = live_client.get(f"{audit['location']}/report")
    assert report.status_code == 200
    html = report.data.decode()
    assert 'id="recourse"' in html and "Global surrogate" in html
    assert recourse["surrogate"]["rules"].splitlines()[0].strip() in unescape(html)


def test_recourse_options_are_checked(client, regression_model):
    credit = builders.credit_logistic(name="recourse-bad")
    upload(client, credit)
    frame = credit.frame(credit.X[:20])
    cases = [
        ({"recourse": {"desired": "maybe"}}, "unknown_target", "recourse.desired"),
        ({"recourse": {"colour": 1}}, "unknown_field", "recourse.colour"),
        ({"recourse": {"samples": 1}}, "invalid_parameter", "recourse.samples"),
        (
            {"recourse": {"constraints": {"immutable": ["height"]}}},
            "unknown_feature",
            "recourse.constraints.immutable[0]",
        ),
        ({"recourse": "yes"}, "invalid_parameter", "recourse"),
    ]
    for change, code, field in cases:
        response = submit(client, frame, {"model": "recourse-bad", "method": "linear", **change})
        assert response.status_code == 422, (change, response.json)
        assert (response.json["code"], response.json["field"]) == (code, field)
    upload(client, regression_model, name="recourse-price")
    plain = regression_model.X[:20]
    data = pd.DataFrame(plain, columns=["rooms", "area", "distance"])
    response = submit(client, data, {"model": "recourse-price", "method": "linear", "recourse": True})
    assert response.status_code == 422 and response.json["code"] == "method_not_applicable"

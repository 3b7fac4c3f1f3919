"""``:counterfactual`` through the API, Redis and real worker processes, every response validated."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests import builders
from tests.conftest import poll, upload


@pytest.fixture(scope="module")
def credit() -> builders.TableModel:
    return builders.credit_logistic()


def predict(built: builders.BuiltModel, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(X, dtype=np.float32)})[-1], dtype=np.float64)


def as_rows(built: builders.TableModel, X: np.ndarray) -> list[dict]:
    return built.frame(X).to_dict(orient="records")


def matrix(built: builders.TableModel, instance: dict) -> np.ndarray:
    categories = built.card["features"][4]["categories"]
    return np.array(
        [
            instance["income"],
            instance["debt"],
            instance["age"],
            instance["sex"],
            categories.index(instance["housing"]),
        ],
        dtype=np.float64,
    )


CONSTRAINTS = {
    "immutable": ["sex", "age"],
    "directions": {"income": "increase_only", "debt": "decrease_only"},
    "ranges": {"income": [0, 200_000], "debt": [0, 100_000]},
    "categories": {"housing": ["rent", "mortgage"]},
}


def test_counterfactuals_are_valid_constrained_and_near_the_analytic_minimum(live_client, credit):
    assert upload(live_client, credit, name="cf-credit").status_code == 201
    denied = np.flatnonzero(predict(credit, credit.X[300:]).argmax(axis=1) == 0)[:3] + 300
    X = credit.X[denied]
    body = {
        "instances": as_rows(credit, X),
        "desired": "approved",
        "constraints": CONSTRAINTS,
        "parameters": {"k": 3, "samples": 300, "seed": 2},
    }
    response = live_client.post("/v1/models/cf-credit:counterfactual", json=body)
    assert response.status_code == 200, response.json
    result = response.json
    scales = result["proximity"]["scales"]
    weights, bias = credit.extra["logit"]
    for x, row in zip(X, result["rows"], strict=True):
        assert row["status"] == "found" and row["desired"] == "approved"
        assert 1 <= len(row["counterfactuals"]) <= 3
        costs = []
        for cf in row["counterfactuals"]:
            c = matrix(credit, cf["instance"])
            assert predict(credit, c[None]).argmax() == 1, "valid through onnxruntime, independently"
            assert cf["quality"]["valid"] and cf["quality"]["constraints_kept"]
            assert c[2] == x[2] and c[3] == x[3]
            assert c[0] >= x[0] and c[1] <= x[1]
            assert cf["instance"]["housing"] in ("rent", "mortgage") or c[4] == x[4]
            assert cf["quality"]["sparsity"] == len(cf["changes"]) == int(np.sum(c != x))
            costs.append(cf["quality"]["proximity"])
        # The analytic cheapest move: income up or debt down to the linear boundary (or a housing change first).
        best = np.inf
        for housing in (x[4], 0.0, 2.0):
            moved = x.copy()
            moved[4] = housing
            z = float(weights @ moved + bias)
            base = float(housing != x[4])
            if z > 0:
                best = min(best, base)
                continue
            best = min(best, base + -z / weights[0] / scales["income"], base + z / weights[1] / scales["debt"])
        assert 0.99 * best <= costs[0] <= 1.10 * best
        assert row["diversity"]["count"] == len(row["counterfactuals"])


def test_a_slow_request_answers_202_and_its_job_holds_the_result(live_client, credit):
    upload(live_client, credit, name="cf-async")
    body = {"instances": as_rows(credit, credit.X[:2]), "wait": 0, "parameters": {"samples": 100}}
    response = live_client.post("/v1/models/cf-async:counterfactual", json=body)
    assert response.status_code in (200, 202)
    if response.status_code == 202:
        job = poll(live_client, response.headers["Location"])
        assert job["status"] == "succeeded" and job["kind"] == "counterfactual"
        result = job["result"]
    else:
        result = response.json
    # A binary model's default goal is the other class.
    for row in result["rows"]:
        assert row["desired"] != row["prediction"]["label"]


def test_impossible_constraints_answer_not_found_with_the_binding_constraint(live_client, credit):
    upload(live_client, credit, name="cf-impossible")
    row = int(np.argmin(predict(credit, credit.X)[:, 1]))
    body = {
        "instances": as_rows(credit, credit.X[row : row + 1]),
        "desired": "approved",
        "constraints": {"immutable": ["income", "debt", "age", "sex", "housing"]},
        "parameters": {"samples": 100},
    }
    response = live_client.post("/v1/models/cf-impossible:counterfactual", json=body)
    assert response.status_code == 200, response.json
    answer = response.json["rows"][0]
    assert answer["status"] == "not_found"
    assert answer["counterfactuals"] == []
    assert "bound hardest" in answer["reason"]
    assert answer["binding_constraints"][0]["constraint"] == "immutable"


def test_card_constraints_apply_and_show_on_the_model(live_client, credit):
    card_constraints = {"immutable": ["sex", "age", "housing"], "directions": {"debt": "decrease_only"}}
    response = upload(live_client, credit, name="cf-card", constraints=card_constraints)
    assert response.status_code == 201, response.json
    assert live_client.get("/v1/models/cf-card").json["card"]["constraints"]["immutable"] == ["age", "housing", "sex"]
    denied = np.flatnonzero(predict(credit, credit.X).argmax(axis=1) == 0)[:2]
    body = {"instances": as_rows(credit, credit.X[denied]), "constraints": {"immutable": ["debt"]}}
    result = live_client.post("/v1/models/cf-card:counterfactual", json=body).json
    assert result["constraints"]["immutable"] == ["age", "debt", "housing", "sex"]
    for row in result["rows"]:
        for cf in row["counterfactuals"]:
            assert {c["feature"] for c in cf["changes"]} <= {"income"}


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"desired": "maybe"}, "unknown_target", "desired"),
        ({"desired_range": [0, 1]}, "invalid_parameter", "desired_range"),
        ({"constraints": {"immutable": ["height"]}}, "unknown_feature", "constraints.immutable[0]"),
        ({"constraints": {"ranges": {"income": [5, 1]}}}, "invalid_constraints", "constraints.ranges.income"),
        (
            {"constraints": {"directions": {"housing": "increase_only"}}},
            "invalid_constraints",
            "constraints.directions.housing",
        ),
        (
            {"constraints": {"categories": {"housing": ["castle"]}}},
            "invalid_constraints",
            "constraints.categories.housing",
        ),
        ({"constraints": {"frozen": []}}, "unknown_field", "constraints.frozen"),
        ({"parameters": {"k": 0}}, "invalid_parameter", "parameters.k"),
        ({"parameters": {"nsamples": 10}}, "unknown_field", "parameters.nsamples"),
        ({"parameters": {"samples": 100_000}, "instances": None}, "too_expensive", "parameters"),
        ({"colour": "red"}, "unknown_field", "colour"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client, credit, change, code, field):
    upload(client, credit, name="cf-bad")
    rows = as_rows(credit, credit.X[:1])
    body = {"instances": rows, "desired": "approved", **change}
    if body.get("instances") is None:
        body["instances"] = as_rows(credit, credit.X[:100])
    if "desired_range" in change:
        body.pop("desired")
    response = client.post("/v1/models/cf-bad:counterfactual", json=body)
    assert response.status_code == 422, response.json
    assert response.json["code"] == code
    assert response.json["field"] == field


def test_a_model_without_background_is_refused(client, credit):
    upload(client, credit, name="cf-nobg", background=False)
    body = {"instances": as_rows(credit, credit.X[:1]), "desired": "approved"}
    response = client.post("/v1/models/cf-nobg:counterfactual", json=body)
    assert response.status_code == 422
    assert response.json["code"] == "background_required"


def test_a_counterfactual_job_can_be_canceled(live_client, credit):
    upload(live_client, credit, name="cf-cancel")
    body = {
        "instances": as_rows(credit, credit.X[:40]),
        "desired": "approved",
        "parameters": {"samples": 2000},
        "wait": 0,
    }
    response = live_client.post("/v1/models/cf-cancel:counterfactual", json=body)
    assert response.status_code == 202, response.json
    canceled = live_client.delete(response.headers["Location"])
    assert canceled.status_code == 200, canceled.json
    job = poll(live_client, response.headers["Location"])
    assert job["status"] == "canceled"
    assert job["error"]["code"] == "canceled"


def test_a_regression_reaches_its_desired_range(live_client, regression_model):
    upload(live_client, regression_model, name="cf-price")
    x = regression_model.X[150]
    value = float(predict(regression_model, x[None])[0, 0])
    body = {"instances": [x.tolist()], "desired_range": [value + 10, value + 30], "parameters": {"samples": 200}}
    response = live_client.post("/v1/models/cf-price:counterfactual", json=body)
    assert response.status_code == 200, response.json
    row = response.json["rows"][0]
    assert row["status"] == "found" and row["desired"] == {"range": [value + 10, value + 30]}
    for cf in row["counterfactuals"]:
        c = np.array([cf["instance"][n] for n in ("rooms", "area", "distance")])
        # float32 rounding of another onnxruntime session: a hair at the boundary.
        assert value + 10 - 1e-4 <= predict(regression_model, c[None])[0, 0] <= value + 30 + 1e-4
    missing = live_client.post("/v1/models/cf-price:counterfactual", json={"instances": [x.tolist()]})
    assert missing.status_code == 422 and missing.json["field"] == "desired_range"

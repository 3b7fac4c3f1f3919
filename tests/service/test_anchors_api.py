"""``method: anchors`` on ``:explain`` through real workers; the answer validates against openapi.yaml."""

from __future__ import annotations

from tests import builders
from tests.conftest import upload


def test_anchors_answer_a_rule_with_precision_bounds_and_coverage(live_client):
    credit = builders.credit_logistic()
    assert upload(live_client, credit, name="anchored").status_code == 201
    rows = credit.frame(credit.X[300:302]).to_dict(orient="records")
    body = {"instances": rows, "method": "anchors", "parameters": {"seed": 1, "max_samples": 4000}}
    response = live_client.post("/v1/models/anchored:explain", json=body)
    assert response.status_code == 200, response.json
    for explanation in response.json["explanations"]:
        target = explanation["targets"][0]
        anchor = target["quality"]["anchor"]
        assert anchor["label"] == explanation["prediction"]["label"]
        low, high = anchor["precision_bounds"]
        assert 0 <= low <= anchor["precision"] <= high <= 1
        assert 0 <= anchor["coverage"] <= 1
        assert all(a["attribution"] == 0 for a in target["attributions"])
        for condition in anchor["conditions"]:
            if condition["feature"] == "housing":
                assert condition["value"] in ("rent", "own", "mortgage")


def test_anchors_refuse_a_regression(live_client, regression_model):
    upload(live_client, regression_model, name="anchored-price")
    body = {"instances": regression_model.X[:1].tolist(), "method": "anchors"}
    response = live_client.post("/v1/models/anchored-price:explain", json=body)
    assert response.status_code == 422
    assert response.json["code"] == "method_not_applicable"

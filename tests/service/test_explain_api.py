"""Explanations through the API, Redis and real worker processes."""

from __future__ import annotations

import io
import time

import numpy as np
import onnxruntime as ort
import pytest
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from tests import builders
from tests.conftest import poll, upload
from tests.shapley import brute_force_shapley


def model_fn(built: builders.BuiltModel):
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def f(X: np.ndarray) -> np.ndarray:
        out = session.run(None, {name: X.astype(np.float32)})[-1]
        if isinstance(out, list):
            out = [list(d.values()) for d in out]
        out = np.asarray(out, dtype=np.float64)
        return out.reshape(len(X), -1)

    return f


def _check_against_truth(result: dict, built: builders.BuiltModel, X: np.ndarray, tol_fraction: float) -> None:
    f = model_fn(built)
    background = built.X[:50]
    outputs = f(built.X)
    output_range = float(outputs.max() - outputs.min())
    names = built.card.get("class_names") or ["value"]
    for i, explanation in enumerate(result["explanations"]):
        base, phi = brute_force_shapley(f, X[i], background)
        for target in explanation["targets"]:
            k = names.index(target["target"])
            got = np.array([a["attribution"] for a in target["attributions"]])
            assert np.max(np.abs(got - phi[:, k])) <= tol_fraction * output_range
            assert abs(target["base_value"] - base[k]) <= 1e-6 * max(1.0, abs(base[k])) + 1e-6
            assert abs(target["quality"]["additivity_residual"]) < 1e-6


@pytest.mark.parametrize("kind", ["binary_model", "multiclass_model", "regression_model"])
def test_kernel_shap_matches_brute_force(live_client, kind, request):
    """kernel_shap agrees with exact Shapley values within 1e-2 of the output range; additivity < 1e-6."""
    built: builders.BuiltModel = request.getfixturevalue(kind)
    name = f"ks-{kind}"
    assert upload(live_client, built, name=name).status_code == 201
    X = built.X[100:103]
    body = {"instances": X.tolist(), "method": "kernel_shap", "parameters": {"nsamples": 4096, "seed": 3}}
    if kind == "multiclass_model":
        predicted = model_fn(built)(X).argmax(axis=1)
        other = [c for c in range(3) if c not in predicted][:1] or [int((predicted[0] + 1) % 3)]
        body["targets"] = [built.card["class_names"][other[0]]]
    response = live_client.post(f"/v1/models/{name}:explain", json=body)
    assert response.status_code == 200, response.json
    result = response.json
    assert result["method"] == "kernel_shap"
    assert result["parameters"]["background"]["rows"] == 50
    assert result["provenance"]["provider"] == "CPUExecutionProvider"
    assert result["provenance"]["shap"] and result["provenance"]["onnxruntime"]
    for explanation in result["explanations"]:
        for target in explanation["targets"]:
            assert all("std_error" in a for a in target["attributions"])
            if "targets" in body:
                assert target["target"] == body["targets"][0]
    _check_against_truth(result, built, X, 1e-2)


def test_default_target_is_the_predicted_class(live_client, binary_model):
    """Without targets, each row explains its predicted class."""
    upload(live_client, binary_model, name="ks-default")
    X = binary_model.X[:4]
    result = live_client.post(
        "/v1/models/ks-default:explain", json={"instances": X.tolist(), "method": "kernel_shap"}
    ).json
    for explanation in result["explanations"]:
        assert [t["target"] for t in explanation["targets"]] == [explanation["prediction"]["label"]]


def test_lime_is_reproducible_and_reports_fit(live_client, binary_model):
    """LIME with a seed gives the same answer twice and reports its local fit."""
    upload(live_client, binary_model, name="lime-model")
    body = {"instances": binary_model.X[:2].tolist(), "method": "lime", "parameters": {"seed": 11, "num_samples": 1000}}
    first = live_client.post("/v1/models/lime-model:explain", json=body)
    assert first.status_code == 200, first.json
    target = first.json["explanations"][0]["targets"][0]
    assert "score" in target["quality"] and "intercept" in target["quality"]
    assert {a["feature"] for a in target["attributions"]} == {"income", "age", "debt", "tenure"}
    # Drop the cached job so the second answer is computed again.
    job_id = first.headers.get("X-Job-Id")
    assert job_id
    Job.fetch(
        job_id,
        connection=Redis.from_url(live_client.application.extensions["onnxplain"].settings.redis_url),
        serializer=JSONSerializer,
    ).delete()
    second = live_client.post("/v1/models/lime-model:explain", json=body)
    assert second.json["explanations"] == first.json["explanations"]


def test_same_seed_same_answer_on_two_worker_processes(live_client, binary_model, live_settings):
    """Identical requests computed by two different worker processes give identical attributions."""
    upload(live_client, binary_model, name="determinism")
    conn = Redis.from_url(live_settings.redis_url)
    for method in ("kernel_shap", "lime"):
        body = {"instances": binary_model.X[:2].tolist(), "method": method, "parameters": {"seed": 5}}
        answers: dict[str, list] = {}
        for _ in range(6):
            response = live_client.post("/v1/models/determinism:explain", json=body)
            assert response.status_code == 200, response.json
            answers.setdefault(response.json["provenance"]["worker"], response.json["explanations"])
            assert response.json["explanations"] == next(iter(answers.values()))
            Job.fetch(response.headers["X-Job-Id"], connection=conn, serializer=JSONSerializer).delete()
            if len(answers) == 2:
                break
        assert len(answers) == 2, f"{method}: only one worker answered"


def test_async_job_then_poll(live_client, binary_model):
    """wait=0 answers 202 with a Location; polling it ends with the result."""
    upload(live_client, binary_model, name="async-model")
    body = {
        "instances": binary_model.X[:3].tolist(),
        "method": "kernel_shap",
        "wait": 0,
        "parameters": {"nsamples": 512, "seed": 1},
    }
    response = live_client.post("/v1/models/async-model:explain", json=body)
    if response.status_code == 200:  # the worker was faster than the first status read
        pytest.fail("a wait of 0 must not block on the result")
    assert response.status_code == 202
    assert response.json["status"] in ("queued", "running", "succeeded")
    job = poll(live_client, response.headers["Location"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0
    assert job["attempt"] == 1  # its one run
    assert len(job["result"]["explanations"]) == 3
    assert job["created_at"] and job["ended_at"]


def test_cancel_a_running_job(live_client, binary_model):
    """DELETE stops a running job; it ends canceled and never succeeds."""
    upload(live_client, binary_model, name="cancel-model")
    rows = np.repeat(binary_model.X[:1], 100, axis=0).tolist()
    body = {"instances": rows, "method": "lime", "wait": 0, "parameters": {"num_samples": 50000, "seed": 2}}
    response = live_client.post("/v1/models/cancel-model:explain", json=body)
    assert response.status_code == 202
    location = response.headers["Location"]
    poll(live_client, location, until=("running",), timeout=30)
    canceled = live_client.delete(location)
    assert canceled.status_code == 200 and canceled.json["status"] == "canceled"
    time.sleep(1.5)
    final = live_client.get(location).json
    assert final["status"] == "canceled" and final["error"]["code"] == "canceled"
    again = live_client.delete(location)
    assert again.status_code in (200, 409)


def test_failed_job_surfaces_its_code(live_client):
    """A model that outputs NaN inside the worker fails the job with code non_finite_model_output."""
    from onnx import helper

    model = builders.helper_model(
        [helper.make_node("Log", ["x"], ["lx"]), helper.make_node("MatMul", ["lx", "w"], ["y"])],
        initializers=[helper.make_tensor("w", 1, [2, 1], [1.0, 1.0])],
    )
    background = b"a,b\n1,2\n3,4\n"
    response = live_client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(model.SerializeToString()), "m"),
            "background": (io.BytesIO(background), "b"),
            "card": '{"name": "nan-model", "task": "regression", "features": ["a", "b"]}',
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 201, response.json
    result = live_client.post(
        "/v1/models/nan-model:explain", json={"instances": [[-1.0, 2.0]], "method": "exact", "wait": 0}
    )
    assert result.status_code in (202, 422)  # 422 when the worker beat the first status read
    job = poll(live_client, f"/v1/jobs/{result.headers['X-Job-Id']}")
    assert job["status"] == "failed"
    assert job["error"]["code"] == "non_finite_model_output"
    synchronous = live_client.post("/v1/models/nan-model:explain", json={"instances": [[-1.0, 2.0]], "method": "exact"})
    assert synchronous.status_code == 422 and synchronous.json["code"] == "non_finite_model_output"


def test_unknown_job_is_404(live_client):
    """An unknown job id is 404 job_not_found, for GET and DELETE."""
    for method in ("get", "delete"):
        response = getattr(live_client, method)("/v1/jobs/explain-doesnotexist")
        assert response.status_code == 404 and response.json["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"instances": [[1, 2, 3, 4]], "method": "magic"}, "unknown_method", "method"),
        (
            {"instances": [[1, 2, 3, 4]], "method": "kernel_shap", "parameters": {"nsamples": 1}},
            "invalid_parameter",
            "parameters.nsamples",
        ),
        (
            {"instances": [[1, 2, 3, 4]], "method": "kernel_shap", "parameters": {"speed": 1}},
            "unknown_field",
            "parameters.speed",
        ),
        ({"instances": [[1, 2, 3, 4]], "targets": ["maybe"]}, "unknown_target", "targets[0]"),
        ({"instances": []}, "empty_input", "instances"),
        ({"instances": [[1, float("inf"), 3, 4]]}, "non_finite", "instances[0].age"),
        ({"instances": [[1, "abc", 3, 4]]}, "not_numeric", "instances[0].age"),
        ({"instances": [[1, 2, 3]]}, "wrong_row_length", "instances[0]"),
        ({"instances": [[1, 2, 3, 4]], "wait": -1}, "invalid_parameter", "wait"),
        ({"instances": [[1, 2, 3, 4]], "colour": "red"}, "unknown_field", "colour"),
    ],
)
def test_explain_validation(live_client, binary_model, body, code, field):
    """Bad explain requests are 422 before anything is enqueued."""
    upload(live_client, binary_model, name="validate-model")
    response = live_client.post("/v1/models/validate-model:explain", json=body)
    assert response.status_code == 422, response.json
    assert response.json["code"] == code and response.json["field"] == field


@pytest.mark.parametrize("variant", ["int8_static", "int8", "no_such_kind"])
def test_a_variant_that_is_not_ready_is_404_before_anything_is_enqueued(live_client, binary_model, variant):
    """The API checks the requested variant (without loading any session): 404 ``variant_not_found`` on
    ``variant`` at once, even with ``wait: 0``, and no job (a job's failure would answer 202 here)."""
    upload(live_client, binary_model, name="novariants")
    body = {"instances": [[1, 2, 3, 4]], "method": "exact", "variant": variant, "wait": 0}
    response = live_client.post("/v1/models/novariants:explain", json=body)
    assert response.status_code == 404, response.json
    assert response.json["code"] == "variant_not_found" and response.json["field"] == "variant"
    assert "X-Job-Id" not in response.headers


def test_no_background_is_a_clear_422(live_client, binary_model):
    """A model registered without background data cannot be explained by kernel_shap or lime."""
    upload(live_client, binary_model, name="nobg", background=False)
    for method in ("kernel_shap", "lime"):
        response = live_client.post("/v1/models/nobg:explain", json={"instances": [[1, 2, 3, 4]], "method": method})
        assert response.status_code == 422 and response.json["code"] == "background_required"


def test_auto_picks_exact_methods_and_says_why(live_client, binary_model, regression_model):
    """auto chooses tree_shap for trees, linear for linear graphs, and reports the reason."""
    forest = builders.forest_classifier()
    upload(live_client, forest, name="auto-forest")
    result = live_client.post("/v1/models/auto-forest:explain", json={"instances": forest.X[:2].tolist()}).json
    assert result["method"] == "tree_shap" and "tree" in result["method_reason"]
    assert result["output"]["kind"] == "margin"
    for explanation in result["explanations"]:
        target = explanation["targets"][0]
        assert "std_error" not in target["attributions"][0]
        assert abs(target["quality"]["additivity_residual"]) < 1e-6
    upload(live_client, regression_model, name="auto-linear")
    linear = live_client.post("/v1/models/auto-linear:explain", json={"instances": regression_model.X[:2].tolist()})
    assert linear.json["method"] == "linear"


def test_tree_shap_in_probability_space_adds_up_to_the_prediction(live_client):
    """tree_shap with output_space=probability sums to the model's own probability."""
    forest = builders.forest_classifier()
    upload(live_client, forest, name="tree-prob")
    body = {"instances": forest.X[:3].tolist(), "method": "tree_shap", "parameters": {"output_space": "probability"}}
    result = live_client.post("/v1/models/tree-prob:explain", json=body).json
    assert result["output"]["kind"] == "probability"
    for explanation in result["explanations"]:
        target = explanation["targets"][0]
        total = target["base_value"] + sum(a["attribution"] for a in target["attributions"])
        assert total == pytest.approx(explanation["prediction"]["scores"][target["target"]], abs=1e-6)


def test_tree_shap_refuses_a_non_tree_model(live_client, binary_model):
    """Asking tree_shap of a logistic regression is a clear 422 naming the method."""
    upload(live_client, binary_model, name="not-a-tree")
    response = live_client.post(
        "/v1/models/not-a-tree:explain", json={"instances": [[1, 2, 3, 4]], "method": "tree_shap"}
    )
    assert response.status_code == 422 and response.json["code"] == "method_not_applicable"

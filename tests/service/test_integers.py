"""Integers from paths, query strings, headers and JSON: ASCII digits only, in range, else a 4xx naming the field."""

from __future__ import annotations

import pytest

from tests.conftest import upload

# "³" passes str.isdigit(); "١" (Arabic-Indic one) and "1_0", " 1" pass int(); none is a version.
NOT_INTEGERS = ["³", "¹", "⑴", "١", "1_0", " 1", "1.0", "-1", "0", "x", "9" * 40]


@pytest.fixture
def registered(client, binary_model):
    assert upload(client, binary_model).status_code == 201
    return binary_model


@pytest.mark.parametrize("version", NOT_INTEGERS)
def test_v1_version_query_is_ascii_digits_only(client, registered, version):
    response = client.get("/v1/models/credit", query_string={"version": version})
    assert response.status_code == 422, response.json
    assert response.json["code"] == "invalid_parameter" and response.json["field"] == "version"


@pytest.mark.parametrize("version", NOT_INTEGERS)
def test_v2_version_path_is_ascii_digits_only(client, registered, version):
    for path in (f"/v2/models/credit/versions/{version}", f"/v2/models/credit/versions/{version}/ready"):
        response = client.get(path)
        assert response.status_code == 422, (path, response.json)
        assert "version" in response.json["error"]


def test_valid_versions_still_work_and_an_empty_query_means_latest(client, registered):
    assert client.get("/v1/models/credit", query_string={"version": "1"}).status_code == 200
    assert client.get("/v1/models/credit?version=").status_code == 200
    assert client.get("/v2/models/credit/versions/1").status_code == 200
    assert client.get("/v2/models/credit/versions/2").status_code == 404


@pytest.mark.parametrize("version", [True, 1.0, "1", 10**400, 0])
def test_json_version_must_be_a_json_integer_in_range(client, registered, version):
    row = registered.X[0].tolist()
    response = client.post("/v1/models/credit:predict", json={"instances": [row], "version": version})
    assert response.status_code == 422, response.json
    assert response.json["field"] == "version"


@pytest.mark.parametrize("wait", [-1, 10**400, "5", True, 1e9])
def test_explain_wait_out_of_range_is_refused_before_anything_is_queued(client, registered, redis_conn, wait):
    row = registered.X[0].tolist()
    response = client.post("/v1/models/credit:explain", json={"instances": [row], "wait": wait})
    assert response.status_code == 422, response.json
    assert response.json["field"] == "wait"
    assert not any(key.startswith(b"rq:job:") for key in redis_conn.keys())


def test_explain_wait_nan_is_refused(client, registered, redis_conn):
    row = registered.X[0].tolist()
    body = '{"instances": [' + ",".join(map(repr, row)) + '], "wait": NaN}'
    response = client.post("/v1/models/credit:explain", data=body, content_type="application/json")
    assert response.status_code == 422, response.json
    assert response.json["field"] == "wait"
    assert not any(key.startswith(b"rq:job:") for key in redis_conn.keys())


@pytest.mark.parametrize("length", ["١", "-1", "99999999"])
def test_v2_binary_header_length_is_checked(client, registered, length):
    response = client.post(
        "/v2/models/credit/infer", data=b'{"inputs": []}', headers={"Inference-Header-Content-Length": length}
    )
    assert response.status_code == 422, response.json
    assert "Inference-Header-Content-Length" in response.json["error"]


def test_a_long_digit_version_is_out_of_range_and_the_contract_says_so(client, registered):
    """33 digits are digits: the answer names the range; the spec's version parameters bound it too (the live
    fuzz once sent one to the surrogate route, whose spec allowed any integer)."""
    import yaml

    from tests.contract import SPEC_PATH

    for path in ("/v1/models/credit", "/v1/models/credit/surrogate"):
        answer = client.get(path, query_string={"version": "674189677761087968088792942772224", "wait": "0"})
        assert answer.status_code == 422 and answer.json["field"] == "version", answer.json
        assert "must be an integer from 1 to" in answer.json["detail"]
    spec = yaml.safe_load(SPEC_PATH.read_text())
    surrogate = spec["paths"]["/v1/models/{name}/surrogate"]["get"]["parameters"]
    assert {"$ref": "#/components/parameters/Version"} in surrogate
    for name in ("PredictRequest", "ExplainRequest", "CounterfactualRequest", "AuditSpec"):
        assert spec["components"]["schemas"][name]["properties"]["version"]["maximum"] == 2**53

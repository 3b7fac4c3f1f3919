"""The hostile request corpus: every route answers malformed or hostile input with a documented 4xx, never a 5xx.

Each response is also validated against openapi.yaml by the test client (tests/contract.py), so a status that an
operation does not document fails too.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from engine.settings import Settings
from service.app import create_app
from tests.conftest import authorize, issue_key, keyed, upload
from tests.contract import ValidatingClient

ROW = [1.0, 2.0, 3.0, 4.0]
DEEP = "[" * 10_000 + "]" * 10_000
DEEP_OBJECT = '{"a":' * 5_000 + "1" + "}" * 5_000
HUGE_INT = "9" * 400
HUGE_STRING = json.dumps("x" * 200_000)

# Hostile JSON texts for one field's value.
VALUES = {
    "deep": DEEP,
    "deep_object": DEEP_OBJECT,
    "huge_int": HUGE_INT,
    "negative_huge_int": "-" + HUGE_INT,
    "giant_int": "9" * 5000,  # past Python's int() digit limit
    "int64_overflow": str(2**63),
    "huge_float": "1e400",
    "nan": "NaN",
    "infinity": "Infinity",
    "minus_infinity": "-Infinity",
    "huge_string": HUGE_STRING,
    "null": "null",
    "true": "true",
    "string": '"x"',
    "unicode_digit": '"\\u0663"',
    "empty_list": "[]",
    "list": "[1, 2]",
    "object": '{"a": 1}',
    "negative": "-1",
    "fraction": "0.5",
}

# Every JSON-bodied operation: (path, valid fields as JSON texts).
ROUTES: dict[str, dict[str, str]] = {
    "/v1/models/credit:predict": {"instances": json.dumps([ROW]), "version": "1", "variant": '"fp32"'},
    "/v1/models/credit:explain": {
        "instances": json.dumps([ROW]),
        "method": '"exact"',
        "parameters": '{"seed": 1}',
        "targets": '["approved"]',
        "version": "1",
        "variant": '"fp32"',
        "wait": "0",
    },
    "/v1/models/species/variants": {"kind": '"int8_dynamic"', "version": "1"},
    "/v1/audits": {
        "model": '"credit"',
        "rows": json.dumps([{"income": 1, "age": 2, "debt": 3, "tenure": 4}]),
        "method": '"exact"',
        "parameters": '{"seed": 1}',
        "version": "1",
        "title": '"t"',
    },
    "/v2/models/credit/infer": {
        "inputs": json.dumps([{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]),
        "id": '"r1"',
        "parameters": "{}",
        "outputs": '[{"name": "probabilities"}]',
    },
}


def body(fields: dict[str, str]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields.items()) + "}"


@pytest.fixture
def hostile(tmp_path, redis_url, redis_conn, binary_model, multiclass_model) -> ValidatingClient:
    """An app with two models (credit, and species for variants), whose explains answer 202 at once."""
    settings = keyed(
        Settings(
            redis_url=redis_url,
            model_dir=tmp_path / "models",
            default_wait_s=0.0,
            max_wait_s=0.0,
            max_body_bytes=1 << 20,
        ),
        tmp_path,
    )
    app = create_app(settings)
    app.testing = True
    app.test_client_class = ValidatingClient
    client = authorize(app.test_client(), issue_key(settings))
    assert upload(client, binary_model).status_code == 201
    assert upload(client, multiclass_model).status_code == 201
    return client


def assert_4xx(response: Any, what: str) -> None:
    assert 400 <= response.status_code < 500, f"{what}: {response.status_code} {response.get_data()[:300]!r}"
    if not response.request.path.startswith("/v2/"):
        assert response.mimetype == "application/problem+json", what
        assert response.json["code"], what


def test_every_field_of_every_route_refuses_hostile_values(hostile):
    """Each field of each JSON route, replaced by each hostile value, answers a documented 4xx (or a 2xx)."""
    for path, fields in ROUTES.items():
        baseline = hostile.post(path, data=body(fields), content_type="application/json")
        assert baseline.status_code < 300, (path, baseline.get_data()[:300])
        for field in fields:
            for label, text in VALUES.items():
                response = hostile.post(path, data=body({**fields, field: text}), content_type="application/json")
                if response.status_code >= 300:
                    assert_4xx(response, f"{path} {field}={label}")


def test_whole_bodies_that_are_hostile(hostile):
    """Bodies that are not an object, nested 10,000 deep, with duplicate keys or truncated answer 4xx."""
    for path, fields in ROUTES.items():
        valid = body(fields)
        cases = {**VALUES, "truncated": valid[: len(valid) // 2], "array": "[" + valid + "]"}
        for label, text in cases.items():
            response = hostile.post(path, data=text, content_type="application/json")
            assert_4xx(response, f"{path} body={label}")
        duplicate = valid[:-1] + ", " + valid[1:]
        response = hostile.post(path, data=duplicate, content_type="application/json")
        assert_4xx(response, f"{path} duplicate keys")
        if path.startswith("/v1/"):
            assert response.json["code"] == "duplicate_key"


def test_deep_nesting_names_its_code(hostile):
    """JSON nested 10,000 deep is 422 json_too_deep, not a RecursionError."""
    response = hostile.post("/v1/models/credit:predict", data=DEEP, content_type="application/json")
    assert response.status_code == 422 and response.json["code"] == "json_too_deep"
    inner = body({"instances": json.dumps([ROW]), "variant": DEEP})
    response = hostile.post("/v1/models/credit:predict", data=inner, content_type="application/json")
    assert response.json["code"] == "json_too_deep"


def test_huge_and_non_finite_numbers_name_their_field(hostile):
    """A 400-digit integer or NaN outside the rows is refused naming the field; NaN in rows names row and column."""
    fields = ROUTES["/v1/models/credit:explain"]
    response = hostile.post(
        "/v1/models/credit:explain",
        data=body({**fields, "parameters": '{"seed": ' + HUGE_INT + "}"}),
        content_type="application/json",
    )
    assert (response.status_code, response.json["code"], response.json["field"]) == (
        422,
        "number_out_of_range",
        "parameters.seed",
    )
    response = hostile.post(
        "/v1/models/credit:explain", data=body({**fields, "wait": "NaN"}), content_type="application/json"
    )
    assert (response.json["code"], response.json["field"]) == ("non_finite_number", "wait")
    response = hostile.post(
        "/v1/models/credit:predict",
        data='{"instances": [[1, ' + HUGE_INT + ", 3, 4]]}",
        content_type="application/json",
    )
    assert (response.json["code"], response.json["field"]) == ("number_out_of_range", "instances[0][1]")
    response = hostile.post(
        "/v1/models/credit:predict", data='{"instances": [[1, Infinity, 3, 4]]}', content_type="application/json"
    )
    assert response.json["code"] == "non_finite"


V2_SHAPES = (
    ([4294967296, 4294967296], []),
    ([2**62, 4], []),
    ([True, 4], ROW),
    ([1, -4], ROW),
    ([1.0, 4.0], ROW),
    ("1,4", ROW),
    ([1] * 40, [1.0]),
    ([1, 4], "abcd"),
    ([1, 4], [[1, 2], [3]]),
    ([1, 4], [{"a": 1}] * 4),
)

V2_BODIES = (
    {"inputs": [{"name": 1, "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": ["FP32"], "data": ROW}]},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW, "parameters": "x"}]},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW, "parameters": {"a": [1]}}]},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": True}}]},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}], "parameters": [1]},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}], "id": 5},
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}], "outputs": [{"name": 3}]},
    {
        "inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}],
    },
    {"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}] * 2},
)


def test_v2_shapes_data_and_fields_are_checked(hostile):
    """V2 shapes that overflow int64, hold booleans or negatives, ragged data and fields of the wrong type are 4xx."""
    for shape, data in V2_SHAPES:
        request = {"inputs": [{"name": "X", "shape": shape, "datatype": "FP32", "data": data}]}
        response = hostile.post("/v2/models/credit/infer", json=request)
        assert_4xx(response, f"shape={shape!r}")
        assert "error" in response.json
    for request in V2_BODIES:
        response = hostile.post("/v2/models/credit/infer", json=request)
        assert_4xx(response, json.dumps(request)[:200])


def test_v2_header_length_is_checked(hostile):
    """An Inference-Header-Content-Length past the body, or not a number, is a 4xx."""
    raw = json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": ROW}]})
    for value in ["999999", "-1", "abc", "\u0663", "1" * 50]:
        response = hostile.post("/v2/models/credit/infer", data=raw, headers={"Inference-Header-Content-Length": value})
        assert_4xx(response, value)


def test_wrong_content_types(hostile):
    """JSON routes refuse other content types (415/422) and uploads refuse JSON and plain text."""
    for path, fields in ROUTES.items():
        if path.startswith("/v2/"):
            continue
        for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]:
            response = hostile.post(path, data=body(fields), content_type=content_type)
            assert_4xx(response, f"{path} as {content_type}")
    for content_type in ["application/json", "text/plain"]:
        response = hostile.post("/v1/models", data="{}", content_type=content_type)
        assert_4xx(response, f"/v1/models as {content_type}")


def test_hostile_multipart_json_parts(hostile, binary_model):
    """A card or spec part nested deep, with duplicate keys, NaN, huge numbers or not UTF-8 answers 422."""
    parts = {
        "deep": DEEP,
        "duplicate": '{"name": "a", "name": "b"}',
        "nan": '{"name": "a", "task": NaN}',
        "huge": '{"name": "a", "task": ' + HUGE_INT + "}",
        "not_utf8": b"\xff\xfe\xfa{",
        "list": "[1]",
    }
    for label, text in parts.items():
        card = text if isinstance(text, str) else (io.BytesIO(text), "card.json")
        response = hostile.post(
            "/v1/models",
            data={"model": (io.BytesIO(binary_model.onnx_bytes), "m.onnx"), "card": card},
            content_type="multipart/form-data",
        )
        assert_4xx(response, f"card {label}")
        spec = text if isinstance(text, str) else (io.BytesIO(text), "spec.json")
        response = hostile.post(
            "/v1/audits",
            data={"dataset": (io.BytesIO(b"income,age,debt,tenure\n1,2,3,4\n"), "d.csv"), "spec": spec},
            content_type="multipart/form-data",
        )
        assert_4xx(response, f"spec {label}")


def test_truncated_multipart(hostile, binary_model):
    """A multipart body cut off mid-part is a 4xx, never a 500."""
    boundary = "XyZ"
    whole = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="card"\r\n\r\n{binary_model.card_json()}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.onnx"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + binary_model.onnx_bytes
    for cut in (len(whole) // 3, len(whole) - 10, len(whole)):
        response = hostile.post(
            "/v1/models", data=whole[:cut], content_type=f"multipart/form-data; boundary={boundary}"
        )
        assert_4xx(response, f"cut at {cut}")


def test_chunked_body_over_the_cap_is_413(hostile):
    """A body sent without Content-Length (chunked) over the cap is 413, not invalid JSON."""
    big = b'{"instances": [' + b"[1.0, 2.0, 3.0, 4.0]," * 60_000 + b"[1, 2, 3, 4]]}"

    def stream():
        yield from (big[i : i + 65536] for i in range(0, len(big), 65536))

    response = hostile.post(
        "/v1/models/credit:predict",
        input_stream=io.BytesIO(big),
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
        headers={"Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 413, response.get_data()[:200]
    assert response.json["code"] == "payload_too_large"


def test_problem_details_never_show_server_paths(hostile, tmp_path):
    """A model that fails its trial load answers a problem without the store's temporary path."""
    import onnx
    from onnx import TensorProto, helper

    # Valid for the checker, but the runtime refuses it: Reshape to a shape that cannot hold the input.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "s"], ["y"])],
        "bad",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor("s", TensorProto.INT64, [2], [-1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = {"name": "leaky", "task": "regression", "features": ["a", "b", "c", "d"], "output": "y"}
    response = hostile.post(
        "/v1/models",
        data={"model": (io.BytesIO(model.SerializeToString()), "m.onnx"), "card": json.dumps(card)},
        content_type="multipart/form-data",
    )
    assert_4xx(response, "leaky model")
    detail = response.json["detail"]
    assert str(tmp_path) not in detail and ".tmp" not in detail and "/onnxruntime" not in detail, detail
    onnx.checker.check_model(model)

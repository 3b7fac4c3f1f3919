"""Registering, listing, versioning, deleting and predicting over HTTP."""

from __future__ import annotations

import io
import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests import builders
from tests.conftest import upload


def _ort(built: builders.BuiltModel, X: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: X.astype(np.float32)})
    out = outputs[-1]
    if isinstance(out, list):
        out = np.array([list(d.values()) for d in out])
    return np.asarray(out, dtype=np.float64)


def test_register_returns_the_model_resource(client, binary_model):
    """A registered model comes back with version 1, its sha256, signature and card."""
    response = upload(client, binary_model)
    assert response.status_code == 201, response.json
    body = response.json
    assert body["name"] == "credit" and body["version"] == 1
    assert len(body["sha256"]) == 64
    assert body["card"]["class_names"] == ["denied", "approved"]
    assert body["signature"]["explained_output"] == "probabilities"
    assert body["background"]["rows"] == 50
    assert response.headers["Location"].endswith("/v1/models/credit?version=1")


def test_same_name_creates_next_version_and_get_by_version(client, binary_model):
    """A second upload under one name is version 2; ?version= reads either."""
    assert upload(client, binary_model).status_code == 201
    second = upload(client, binary_model, background=False)
    assert second.json["version"] == 2
    assert client.get("/v1/models/credit").json["version"] == 2
    assert client.get("/v1/models/credit?version=1").json["background"]["rows"] == 50
    assert client.get("/v1/models/credit").json["versions"] == [1, 2]
    missing = client.get("/v1/models/credit?version=7")
    assert missing.status_code == 404 and missing.json["code"] == "version_not_found"


def test_list_is_paginated(client, binary_model, regression_model, multiclass_model):
    """Listing walks pages with limit and next_cursor."""
    for built in (binary_model, regression_model, multiclass_model):
        assert upload(client, built).status_code == 201
    first = client.get("/v1/models?limit=2").json
    assert [m["name"] for m in first["models"]] == ["credit", "price"]
    second = client.get(f"/v1/models?limit=2&cursor={first['next_cursor']}").json
    assert [m["name"] for m in second["models"]] == ["species"] and second["next_cursor"] is None


def test_delete_one_version_then_all(client, binary_model):
    """DELETE ?version= removes one version; DELETE removes the rest; then 404."""
    upload(client, binary_model)
    upload(client, binary_model)
    assert client.delete("/v1/models/credit?version=1").json["deleted_versions"] == [1]
    assert client.get("/v1/models/credit").json["versions"] == [2]
    assert client.delete("/v1/models/credit").json["deleted_versions"] == [2]
    gone = client.get("/v1/models/credit")
    assert gone.status_code == 404 and gone.json["code"] == "model_not_found"
    assert client.delete("/v1/models/credit").status_code == 404


@pytest.mark.parametrize("kind", ["binary_model", "multiclass_model", "regression_model"])
def test_predict_matches_onnxruntime(client, kind, request):
    """Predictions equal onnxruntime called directly, for arrays and named rows."""
    built: builders.BuiltModel = request.getfixturevalue(kind)
    assert upload(client, built).status_code == 201
    X = built.X[:5]
    names = [f if isinstance(f, str) else f["name"] for f in built.card["features"]]
    rows = [dict(zip(names, map(float, r), strict=True)) for r in X]
    expected = _ort(built, X)
    for instances in (X.tolist(), rows):
        response = client.post(f"/v1/models/{built.card['name']}:predict", json={"instances": instances})
        assert response.status_code == 200, response.json
        predictions = response.json["predictions"]
        if built.card["task"] == "regression":
            np.testing.assert_allclose([p["value"] for p in predictions], expected[:, 0], rtol=1e-6)
        else:
            classes = built.card["class_names"]
            got = np.array([[p["scores"][c] for c in classes] for p in predictions])
            np.testing.assert_allclose(got, expected, rtol=1e-6)
            assert [p["label"] for p in predictions] == [classes[i] for i in expected.argmax(axis=1)]
    assert response.json["model"]["variant"] == "fp32"
    assert response.json["provider"] == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("instances", "code", "field"),
    [
        ([[1.0, 2.0]], "wrong_row_length", "instances[0]"),
        ([[1.0, "x", 3.0, 4.0]], "not_numeric", "instances[0].age"),
        ([[1.0, 2.0, 3.0, None]], "not_numeric", "instances[0].tenure"),
        ([{"income": 1, "age": 2, "debt": 3}], "missing_feature", "instances[0].tenure"),
        ([{"income": 1, "age": 2, "debt": 3, "tenure": 4, "zip": 5}], "unknown_field", "instances[0].zip"),
        ([], "empty_input", "instances"),
        ({"a": 1}, "invalid_instances", "instances"),
        ([[1.0, 2.0, 3.0, 4.0], [1.0, 1e400, 3.0, 4.0]], "non_finite", "instances[1].age"),
    ],
)
def test_bad_rows_are_422_naming_row_and_feature(client, binary_model, instances, code, field):
    """Every bad row is a 422 whose code and field name the problem."""
    upload(client, binary_model)
    response = client.post("/v1/models/credit:predict", json={"instances": instances})
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] == code and response.json["field"] == field


def test_nan_literal_in_json_is_rejected(client, binary_model):
    """Python's json accepts NaN; the API still refuses it by row and feature."""
    upload(client, binary_model)
    body = '{"instances": [[1, NaN, 3, 4]]}'
    response = client.post("/v1/models/credit:predict", data=body, content_type="application/json")
    assert response.status_code == 422 and response.json["code"] == "non_finite"
    assert response.json["field"] == "instances[0].age"


def test_predict_request_errors(client, binary_model):
    """Unknown fields, wrong media type, bad JSON, unknown model and variant all get problem+json."""
    upload(client, binary_model)
    unknown = client.post("/v1/models/credit:predict", json={"instances": [[1, 2, 3, 4]], "foo": 1})
    assert unknown.status_code == 422 and unknown.json["code"] == "unknown_field" and unknown.json["field"] == "foo"
    media = client.post("/v1/models/credit:predict", data="instances", content_type="text/plain")
    assert media.status_code == 415 and media.json["code"] == "unsupported_media_type"
    broken = client.post("/v1/models/credit:predict", data="{", content_type="application/json")
    assert broken.status_code == 422 and broken.json["code"] == "invalid_json"
    nomodel = client.post("/v1/models/nope:predict", json={"instances": [[1, 2, 3, 4]]})
    assert nomodel.status_code == 404 and nomodel.json["code"] == "model_not_found"
    novariant = client.post("/v1/models/credit:predict", json={"instances": [[1, 2, 3, 4]], "variant": "int8"})
    assert novariant.status_code == 404 and novariant.json["code"] == "variant_not_found"


def test_flask_errors_are_problem_json(client):
    """Flask's own 404 and 405 come back as problem+json with codes."""
    nowhere = client.get("/v1/nowhere")
    assert nowhere.status_code == 404 and nowhere.json["code"] == "not_found"
    assert nowhere.mimetype == "application/problem+json"
    wrong = client.put("/v1/models")
    assert wrong.status_code == 405 and wrong.json["code"] == "method_not_allowed"


def test_body_over_the_cap_is_413_before_buffering(client, settings):
    """An upload over max_model_bytes is refused from its Content-Length."""
    big = b"\0" * (settings.max_model_bytes + 1)
    response = client.post(
        "/v1/models",
        data={"model": (io.BytesIO(big), "m.onnx"), "card": "{}"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413 and response.json["code"] == "payload_too_large"
    assert not any((settings.model_dir).glob("*/*"))


def _upload_bytes(client, data: bytes, card: dict):
    return client.post(
        "/v1/models",
        data={"model": (io.BytesIO(data), "m.onnx"), "card": json.dumps(card)},
        content_type="multipart/form-data",
    )


REG_CARD = {"name": "hand", "task": "regression", "features": ["a", "b"]}


def test_not_onnx(client, settings):
    """Random bytes are 422 not_onnx and leave nothing in the store."""
    response = _upload_bytes(client, b"this is not a model at all", REG_CARD)
    assert response.status_code == 422 and response.json["code"] == "not_onnx"
    assert list(settings.model_dir.glob("hand*")) == []


def test_checker_failure_is_invalid_model(client):
    """A graph that uses an undefined value fails onnx.checker: 422 invalid_model."""
    model = builders.helper_model([helper.make_node("Add", ["x", "missing"], ["y"])])
    response = _upload_bytes(client, model.SerializeToString(), REG_CARD)
    assert response.status_code == 422 and response.json["code"] == "invalid_model"


def test_external_data_is_refused(client):
    """An initializer that points at an external file is 422 external_data_not_allowed."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 2.0])
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    model = builders.helper_model([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[w])
    response = _upload_bytes(client, model.SerializeToString(), REG_CARD)
    assert response.status_code == 422 and response.json["code"] == "external_data_not_allowed"


def test_external_data_in_a_subgraph_is_refused(client):
    """External data hidden in an If branch's Constant is found too."""
    t = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    t.data_location = TensorProto.EXTERNAL
    t.ClearField("float_data")
    entry = t.external_data.add()
    entry.key, entry.value = "location", "secret.bin"
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c_out"], value=t)],
        "b",
        [],
        [helper.make_tensor_value_info("c_out", TensorProto.FLOAT, [1])],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    model = builders.helper_model(nodes, initializers=[cond])
    response = _upload_bytes(client, model.SerializeToString(), REG_CARD)
    assert response.status_code == 422 and response.json["code"] == "external_data_not_allowed"


def test_custom_op_domain_is_refused(client):
    """An operator from a custom domain is 422 unsupported_op_domain."""
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.evil")
    model = builders.helper_model([node], opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    response = _upload_bytes(client, model.SerializeToString(), REG_CARD)
    assert response.status_code == 422 and response.json["code"] == "unsupported_op_domain"


def test_card_mismatch_feature_count(client, binary_model):
    """A card listing the wrong number of features is 422 card_mismatch."""
    response = upload(client, binary_model, background=False, features=["a", "b", "c"])
    assert response.status_code == 422 and response.json["code"] == "card_mismatch"
    assert response.json["field"] == "card.features"


def test_card_mismatch_classes(client, binary_model):
    """A card with three classes for a two-column output is 422 card_mismatch."""
    response = upload(client, binary_model, background=False, class_names=["a", "b", "c"])
    assert response.status_code == 422 and response.json["code"] == "card_mismatch"


def test_card_mismatch_found_only_when_running(client, multiclass_model):
    """ZipMap outputs have no static width; the child-process probe catches the mismatch."""
    response = upload(client, multiclass_model, background=False, class_names=["a", "b"])
    assert response.status_code == 422 and response.json["code"] == "card_mismatch"


@pytest.mark.parametrize(
    ("card", "code", "field"),
    [
        ({"task": "classification", "features": ["a"]}, "invalid_name", "card.name"),
        ({"name": "x", "task": "ranking", "features": ["a"]}, "invalid_card", "card.task"),
        ({"name": "x", "task": "regression", "features": ["a"], "colour": "red"}, "unknown_field", "card.colour"),
        ({"name": "../etc", "task": "regression", "features": ["a"]}, "invalid_name", "card.name"),
        (
            {"name": "x", "task": "classification", "features": ["a", "b"], "class_names": ["one"]},
            "invalid_card",
            "card.class_names",
        ),
    ],
)
def test_bad_cards(client, card, code, field):
    """Card errors are 422 naming the card field."""
    model = builders.affine_regressor([1.0, 2.0])
    response = _upload_bytes(client, model.SerializeToString(), card)
    assert response.status_code == 422 and response.json["code"] == code and response.json["field"] == field


def test_background_is_validated_against_features(client, binary_model):
    """A background with a non-numeric cell is 422 naming the row and column."""
    csv = b"income,age,debt,tenure\n1,2,3,4\n1,oops,3,4\n"
    response = client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(binary_model.onnx_bytes), "x"),
            "card": binary_model.card_json(),
            "background": (io.BytesIO(csv), "bg.csv"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 422 and response.json["code"] == "not_numeric"
    assert response.json["field"] == "background[1].age"
    extra = b"income,age,debt,tenure,secret\n1,2,3,4,5\n"
    response = client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(binary_model.onnx_bytes), "x"),
            "card": binary_model.card_json(),
            "background": (io.BytesIO(extra), "bg.csv"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 422 and response.json["code"] == "unknown_field"


def test_parquet_background(client, binary_model):
    """A Parquet background is recognised by its content, not its filename."""
    import pandas as pd

    frame = pd.DataFrame(binary_model.X[:20], columns=["income", "age", "debt", "tenure"])
    response = client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(binary_model.onnx_bytes), "x"),
            "card": binary_model.card_json(),
            "background": (io.BytesIO(builders.to_parquet(frame)), "../../evil.csv"),
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 201 and response.json["background"]["rows"] == 20


def test_model_repository_is_loaded_at_start(settings, binary_model, redis_conn):
    """A version copied into the store by hand is served after start."""
    from service.app import create_app

    directory = settings.model_dir / "copied" / "3"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(binary_model.onnx_bytes)
    (directory / "card.json").write_text(binary_model.card_json(name="copied"))
    broken = settings.model_dir / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"garbage")
    (broken / "card.json").write_text(binary_model.card_json(name="broken"))
    app = create_app(settings)
    client = app.test_client()
    body = client.get("/v1/models/copied").json
    assert body["version"] == 3 and len(body["sha256"]) == 64
    response = client.post("/v1/models/copied:predict", json={"instances": binary_model.X[:2].tolist()})
    assert response.status_code == 200
    assert client.get("/v1/models/broken").status_code in (404, 422)


def test_reads_never_write_to_the_store(client, settings, binary_model):
    """A version copied in after start is not probed or sealed by a GET: only a scan at start adopts it."""
    directory = settings.model_dir / "late" / "1"
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(binary_model.onnx_bytes)
    (directory / "card.json").write_text(binary_model.card_json(name="late"))
    before = sorted(p.name for p in directory.iterdir())
    assert client.get("/v1/models/late").status_code == 404
    assert client.get("/v1/models").status_code == 200
    assert sorted(p.name for p in directory.iterdir()) == before

"""Screening finds external data where a model file can hide it: training_info graphs, sparse tensors' indices."""

from __future__ import annotations

import io
import json

from onnx import TensorProto, helper

from tests import builders

CARD = {"name": "hidden", "task": "regression", "features": ["a", "b"]}


def _external(name: str, dtype: int = TensorProto.FLOAT, dims: tuple[int, ...] = (1,)) -> TensorProto:
    tensor = helper.make_tensor(name, dtype, list(dims), [0] * max(1, dims[0] if dims else 1))
    tensor.data_location = TensorProto.EXTERNAL
    for field in ("float_data", "int64_data"):
        tensor.ClearField(field)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/shadow"
    return tensor


def _post(client, model) -> object:
    data = {"model": (io.BytesIO(model.SerializeToString()), "m.onnx"), "card": json.dumps(CARD)}
    return client.post("/v1/models", data=data, content_type="multipart/form-data")


def _linear() -> object:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 2.0])
    return builders.helper_model([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[w])


def test_external_data_in_training_info_is_refused(client, settings):
    model = _linear()
    info = model.training_info.add()
    info.initialization.CopyFrom(
        helper.make_graph(
            [helper.make_node("Constant", [], ["c"], value=_external("c"))],
            "init",
            [],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
        )
    )
    response = _post(client, model)
    assert response.status_code == 422, response.json
    assert response.json["code"] == "external_data_not_allowed"
    assert not (settings.model_dir / "hidden").exists()


def test_external_data_in_a_sparse_attributes_indices_is_refused(client, settings):
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    sparse = helper.make_sparse_tensor(values, _external("i", TensorProto.INT64, (1,)), [2, 1])
    model = _linear()
    model.graph.node.insert(0, helper.make_node("Constant", [], ["s"], sparse_value=sparse))
    response = _post(client, model)
    assert response.status_code == 422, response.json
    assert response.json["code"] == "external_data_not_allowed"
    assert not (settings.model_dir / "hidden").exists()


def test_the_same_models_without_the_hidden_data_register(client):
    assert _post(client, _linear()).status_code == 201

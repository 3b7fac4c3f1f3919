"""Screening finds external data where a model file can hide it: training_info graphs, sparse tensors' indices."""

from __future__ import annotations

import io
import json

import onnx
import pytest
from onnx import TensorProto, helper

from tests import builders
from tests.corpus.generate import CASES

CARD = {"name": "hidden", "task": "regression", "features": ["a", "b"]}


def _post(client, model) -> object:
    data = {"model": (io.BytesIO(model.SerializeToString()), "m.onnx"), "card": json.dumps(CARD)}
    return client.post("/v1/models", data=data, content_type="multipart/form-data")


def _linear() -> object:
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 2.0])
    return builders.helper_model([helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[w])


@pytest.mark.parametrize("case", ["external_in_training_info", "external_sparse_indices"])
def test_external_data_in_training_info_or_sparse_indices_is_refused(client, settings, case):
    """Two of the hidden places (the whole corpus is tests/corpus): refused, and nothing reaches the store."""
    response = _post(client, onnx.load_model_from_string(CASES[case].build()))
    assert response.status_code == 422, response.json
    assert response.json["code"] == "external_data_not_allowed"
    assert not (settings.model_dir / "hidden").exists()


def test_the_same_models_without_the_hidden_data_register(client):
    assert _post(client, _linear()).status_code == 201

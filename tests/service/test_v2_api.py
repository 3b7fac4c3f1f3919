"""The Open Inference Protocol (V2) routes, driven by the real tritonclient.http client."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server

from tests import builders
from tests.conftest import upload


class BearerKey(InferenceServerClientPlugin):
    """tritonclient's plugin hook: the documented way to add a header (our API key) to every call."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request) -> None:
        request.headers["Authorization"] = f"Bearer {self.key}"


@pytest.fixture
def server(client, binary_model, regression_model) -> Iterator[str]:
    """A real HTTP server (werkzeug, threaded) serving the app with two models registered."""
    app = client.application
    assert upload(client, binary_model).status_code == 201
    assert upload(client, regression_model).status_code == 201
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def _direct(built: builders.BuiltModel, X: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: X})


def test_health_and_metadata(server, api_key):
    """Liveness, readiness, model readiness and metadata answer as Triton's client expects."""
    triton = httpclient.InferenceServerClient(url=server)
    triton.register_plugin(BearerKey(api_key))
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("credit")
    assert not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("credit")
    assert meta["name"] == "credit" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    with pytest.raises(InferenceServerException, match="no model named"):
        triton.get_model_metadata("nope")


def test_infer_with_default_binary_tensors(server, api_key, binary_model):
    """A default tritonclient infer call (binary tensor extension both ways) equals onnxruntime."""
    triton = httpclient.InferenceServerClient(url=server)
    triton.register_plugin(BearerKey(api_key))
    X = binary_model.X[:6].astype(np.float32)
    tensor = httpclient.InferInput("X", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = triton.infer("credit", [tensor])
    label, probabilities = _direct(binary_model, X)
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-6)


def test_infer_with_json_tensors_and_requested_outputs(server, api_key, regression_model):
    """JSON tensors in, one requested JSON output back, on a named version."""
    triton = httpclient.InferenceServerClient(url=server)
    triton.register_plugin(BearerKey(api_key))
    X = regression_model.X[:3].astype(np.float32)
    tensor = httpclient.InferInput("X", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=False)
    wanted = httpclient.InferRequestedOutput("variable", binary_data=False)
    result = triton.infer("price", [tensor], model_version="1", outputs=[wanted], request_id="r1")
    (expected,) = _direct(regression_model, X)
    np.testing.assert_allclose(result.as_numpy("variable"), expected, rtol=1e-6)
    assert result.get_response()["id"] == "r1"


def test_infer_errors_use_the_v2_shape(server, api_key, client):
    """Bad V2 requests answer {"error": ...}, which tritonclient raises as exceptions."""
    triton = httpclient.InferenceServerClient(url=server)
    triton.register_plugin(BearerKey(api_key))
    wrong = httpclient.InferInput("X", [1, 4], "FP64")
    wrong.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))
    with pytest.raises(InferenceServerException, match="takes FP32"):
        triton.infer("credit", [wrong])
    nan = httpclient.InferInput("X", [1, 4], "FP32")
    nan.set_data_from_numpy(np.array([[1, np.nan, 0, 0]], dtype=np.float32))
    with pytest.raises(InferenceServerException, match="NaN"):
        triton.infer("credit", [nan])
    response = client.post("/v2/models/credit/infer", data=b"{not json")
    assert response.status_code == 422 and set(response.json) == {"error"}
    shape = client.post(
        "/v2/models/credit/infer",
        json={"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
    )
    assert shape.status_code == 422 and "shape" in shape.json["error"]
    missing = client.post("/v2/models/nope/infer", json={"inputs": []})
    assert missing.status_code == 404 and "error" in missing.json


def test_v2_needs_a_key_except_health(server):
    """Without a key tritonclient still sees a live, ready server, and its metadata call fails with the V2 error."""
    triton = httpclient.InferenceServerClient(url=server)
    assert triton.is_server_live() and triton.is_server_ready()
    with pytest.raises(InferenceServerException) as refused:
        triton.get_model_metadata("credit")
    assert "API key" in str(refused.value)

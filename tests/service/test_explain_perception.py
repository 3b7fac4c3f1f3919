"""Image and text models over HTTP: register, predict, explain (sync and async) through real workers.

Every response is validated against openapi.yaml by the test client.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from engine.explain.visual import decode_map
from engine.models.image import encode_png
from tests import builders, deep_models
from tests.conftest import poll

DIGITS_CARD = {
    "name": "digits",
    "task": "classification",
    "input_kind": "image",
    "image": {"layout": "NCHW", "height": 8, "width": 8, "channels": "L", "scale": "unit"},
    "class_names": [str(d) for d in range(10)],
    "output": "probabilities",
}
TEXT_CARD = {
    "name": "reviews",
    "task": "classification",
    "input_kind": "text",
    "text": {"max_chars": 500, "max_words": 40},
    "class_names": ["negative", "positive"],
    "output": "probabilities",
}


def register(client, onnx_bytes: bytes, card: dict, background: bytes | None = None):
    data = {"model": (io.BytesIO(onnx_bytes), "model.onnx"), "card": json.dumps(card)}
    if background is not None:
        data["background"] = (io.BytesIO(background), "background.csv")
    return client.post("/v1/models", data=data, content_type="multipart/form-data")


def pixel_csv(images: np.ndarray) -> bytes:
    flat = images.reshape(len(images), -1)
    header = ",".join(f"p{i}" for i in range(flat.shape[1]))
    return (header + "\n" + "\n".join(",".join(f"{v:.4f}" for v in row) for row in flat) + "\n").encode()


@pytest.fixture(scope="module")
def cnn() -> deep_models.ImageModel:
    pytest.importorskip("torch")
    return deep_models.digits_cnn()


def test_image_model_registers_lists_its_methods_and_predicts(client, cnn):
    pytest.importorskip("captum")
    response = register(client, cnn.onnx_bytes, DIGITS_CARD, pixel_csv(cnn.images[:20]))
    assert response.status_code == 201, response.json
    methods = {m["name"]: m for m in response.json["methods"]}
    assert set(methods) == {
        "lime",
        "partition",
        "occlusion",
        "grad_cam",
        "saliency",
        "integrated_gradients",
        "smoothgrad",
    }
    assert all(m["applies"] for m in methods.values())
    assert methods["grad_cam"]["layers"] == ["/0/Conv", "/2/Conv"]
    assert response.json["background"]["rows"] == 20
    images = [encode_png(cnn.images[0]), cnn.images[1][..., 0].tolist()]
    predicted = client.post("/v1/models/digits:predict", json={"instances": images})
    assert predicted.status_code == 200
    assert [p["label"] for p in predicted.json["predictions"]] == [str(cnn.labels[0]), str(cnn.labels[1])]


@pytest.mark.parametrize(
    ("instance", "code"),
    [("bm90IGFuIGltYWdl", "invalid_image"), ([[0.5] * 7] * 8, "wrong_image_size"), (7, "invalid_image")],
)
def test_bad_images_are_422_with_codes(client, cnn, instance, code):
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    response = client.post("/v1/models/digits:predict", json={"instances": [instance]})
    assert response.status_code == 422 and response.json["code"] == code
    assert response.json["field"] == "instances[0]"


def test_a_card_that_does_not_match_the_image_tensor_is_refused(client, cnn):
    card = {**DIGITS_CARD, "image": {**DIGITS_CARD["image"], "height": 9}}
    response = register(client, cnn.onnx_bytes, card)
    assert response.status_code == 422 and response.json["code"] == "card_mismatch"


@pytest.mark.parametrize(
    "method", ["grad_cam", "integrated_gradients", "occlusion", "lime", "partition", "saliency", "smoothgrad"]
)
def test_image_explanations_over_http(live_client, cnn, method):
    pytest.importorskip("captum")
    name = f"digits-{method.replace('_', '-')}"
    response = register(live_client, cnn.onnx_bytes, {**DIGITS_CARD, "name": name}, pixel_csv(cnn.images[:20]))
    assert response.status_code == 201
    params = {
        "seed": 1,
        **({"num_samples": 300} if method == "lime" else {}),
        **({"max_evals": 200} if method == "partition" else {}),
    }
    png = encode_png(cnn.images[5])
    body = {"instances": [png], "method": method, "parameters": params, "wait": 60}
    answer = live_client.post(f"/v1/models/{name}:explain", json=body)
    # A worker's first shap or torch import can outlast the wait: the job then finishes asynchronously.
    result = answer.json if answer.status_code == 200 else poll(live_client, answer.headers["Location"])["result"]
    (explanation,) = result["explanations"]
    expected = int(np.argmax(cnn.f()(cnn.spec.decode(png, "x")[None])[0]))
    assert explanation["prediction"]["label"] == str(expected) == explanation["targets"][0]["target"]
    (target,) = explanation["targets"]
    assert decode_map(target["map"]).shape == (8, 8)
    assert Image.open(io.BytesIO(base64.b64decode(target["heatmap_png"]))).format == "PNG"
    assert target["faithfulness"]["deletion"]["random_auc"] >= 0


def test_auto_on_an_image_model_picks_grad_cam_and_says_why_async(live_client, cnn):
    pytest.importorskip("captum")
    assert register(live_client, cnn.onnx_bytes, {**DIGITS_CARD, "name": "digits-auto"}).status_code == 201
    body = {"instances": [cnn.images[2][..., 0].tolist()], "wait": 0}
    accepted = live_client.post("/v1/models/digits-auto:explain", json=body)
    assert accepted.status_code == 202
    job = poll(live_client, accepted.headers["Location"])
    assert job["status"] == "succeeded", job
    assert job["result"]["method"] == "grad_cam" and "Grad-CAM" in job["result"]["method_reason"]


def test_gradient_methods_on_a_tree_model_are_422_naming_the_operator(client):
    forest = builders.forest_classifier()
    data = {"model": (io.BytesIO(forest.onnx_bytes), "m.onnx"), "card": forest.card_json()}
    data["background"] = (io.BytesIO(forest.background_csv()), "b.csv")
    assert client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201
    described = client.get("/v1/models/forest").json
    assert "grad_cam" not in {m["name"] for m in described["methods"]}  # image-only: not listed for tables
    response = client.post(
        "/v1/models/forest:explain", json={"instances": [forest.X[0].tolist()], "method": "grad_cam"}
    )
    assert response.status_code == 422 and response.json["code"] == "method_not_applicable"


def test_text_model_over_http(live_client):
    model = deep_models.tfidf_classifier()
    response = register(live_client, model.onnx_bytes, TEXT_CARD)
    assert response.status_code == 201, response.json
    methods = {m["name"]: m for m in response.json["methods"]}
    assert methods["integrated_gradients"]["applies"] is False and "string" in methods["integrated_gradients"]["reason"]
    text = "we ordered from the menu and the food was excellent"
    predicted = live_client.post("/v1/models/reviews:predict", json={"instances": [text]})
    assert predicted.json["predictions"][0]["label"] == "positive"
    for method in ("lime", "partition", "occlusion", "auto"):
        body = {
            "instances": [text],
            "method": method,
            "parameters": {"seed": 0} if method != "auto" else {},
            "wait": 60,
        }
        answer = live_client.post("/v1/models/reviews:explain", json=body)
        assert answer.status_code == 200, answer.json
        (target,) = answer.json["explanations"][0]["targets"]
        top = max(target["attributions"], key=lambda a: a["attribution"])
        assert top["token"] == "excellent" and text[top["start"] : top["end"]] == "excellent"
        assert ">excellent</mark>" in target["highlight_html"]
    refused = live_client.post(
        "/v1/models/reviews:explain", json={"instances": [text], "method": "integrated_gradients"}
    )
    assert refused.status_code == 422 and refused.json["code"] == "method_not_supported_for_model"


@pytest.mark.parametrize(("text", "code"), [("", "empty_text"), ("word " * 41, "text_too_long"), (3, "invalid_text")])
def test_bad_texts_are_422_with_codes(client, text, code):
    assert register(client, deep_models.tfidf_classifier().onnx_bytes, TEXT_CARD).status_code == 201
    response = client.post("/v1/models/reviews:explain", json={"instances": [text], "method": "occlusion"})
    assert response.status_code == 422 and response.json["code"] == code


def test_audits_of_image_models_are_refused_for_now(client, cnn):
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    response = client.post("/v1/audits", json={"model": "digits", "rows": [[0.0] * 64]})
    assert response.status_code == 422


def test_variants_of_image_models_are_refused_for_now(client, cnn):
    assert register(client, cnn.onnx_bytes, DIGITS_CARD, pixel_csv(cnn.images[:20])).status_code == 201
    response = client.post("/v1/models/digits/variants", json={"kind": "int8_dynamic"})
    assert response.status_code == 422 and response.json["code"] == "variant_unsupported"


RGB_CARD = {
    "name": "photos",
    "task": "classification",
    "input_kind": "image",
    "image": {"layout": "NCHW", "height": 224, "width": 224, "channels": "RGB", "scale": "unit"},
    "class_names": ["cat", "dog"],
    "output": "probabilities",
}


def test_a_224_rgb_image_travels_as_bytes_and_comes_back_as_a_full_size_map(live_client, live_settings):
    """A 224×224 RGB PNG: the job payload holds its bytes (uint8 base64), not 150k floats; the map is 224×224."""
    pytest.importorskip("captum")
    from engine.explain.plan import build_request
    from engine.models.store import ModelRegistry

    onnx_bytes = deep_models.rgb_cnn()
    assert register(live_client, onnx_bytes, RGB_CARD).status_code == 201
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (224, 224, 3)).astype(np.float64) / 255.0
    png = encode_png(picture)
    model = ModelRegistry(live_settings).get("photos")
    payload = build_request({"instances": [png], "method": "grad_cam"}, model, live_settings, "fp32").to_payload()
    assert payload["rows"]["encoding"] == "uint8" and payload["rows"]["shape"] == [1, 224, 224, 3]
    assert len(json.dumps(payload)) < 224 * 224 * 3 * 4 / 3 + 10_000  # one byte per value, base64
    body = {"instances": [png], "method": "grad_cam", "parameters": {"seed": 0}, "wait": 90}
    answer = live_client.post("/v1/models/photos:explain", json=body)
    result = answer.json if answer.status_code == 200 else poll(live_client, answer.headers["Location"])["result"]
    (target,) = result["explanations"][0]["targets"]
    assert decode_map(target["map"]).shape == (224, 224)
    heatmap = Image.open(io.BytesIO(base64.b64decode(target["heatmap_png"])))
    assert heatmap.size == (224, 224)
    sess = deep_models.session(onnx_bytes)
    expected = sess.run(None, {"image": np.transpose(picture, (2, 0, 1))[None].astype(np.float32)})[0][0]
    scores = result["explanations"][0]["prediction"]["scores"]
    assert [scores["cat"], scores["dog"]] == pytest.approx(expected.tolist(), abs=1e-5)


def test_too_many_pixels_in_one_explain_request_is_422(client):
    pytest.importorskip("torch")
    assert register(client, deep_models.rgb_cnn(), RGB_CARD).status_code == 201
    png = encode_png(np.zeros((224, 224, 3)))
    response = client.post("/v1/models/photos:explain", json={"instances": [png] * 17, "method": "occlusion"})
    assert response.status_code == 422 and response.json["code"] == "too_many_rows"
    assert response.json["field"] == "instances"

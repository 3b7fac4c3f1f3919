"""Token-id text models over HTTP: a tokenizer shipped with the model, screened, and IG on the embedding lookup.

The model (mean of embeddings, linear) and its WordLevel ``tokenizer.json`` are trained in the session on
generated sentences with one planted sentiment word; the planted word must get the top attribution.
"""

from __future__ import annotations

import io
import json

import pytest

from tests import deep_models
from tests.conftest import ValidatingClient, authorize, poll

CARD = {
    "name": "tickets-ids",
    "task": "classification",
    "input_kind": "text",
    "text": {"max_chars": 500, "max_words": 40, "tokenizer": "tokenizer.json", "max_length": 16},
    "class_names": ["negative", "positive"],
    "output": "probabilities",
}
TEXT = "the table arrived near the station and it was awful today"


@pytest.fixture(scope="module")
def token_model(tmp_path_factory) -> deep_models.TokenModel:
    pytest.importorskip("torch")
    return deep_models.token_classifier(tmp_path_factory.mktemp("tokens"))


def register(client, model: deep_models.TokenModel, card: dict, tokenizer: bytes | None):
    data = {"model": (io.BytesIO(model.onnx_bytes), "model.onnx"), "card": json.dumps(card)}
    if tokenizer is not None:
        data["tokenizer"] = (io.BytesIO(tokenizer), "tokenizer.json")
    return client.post("/v1/models", data=data, content_type="multipart/form-data")


def test_token_model_registers_predicts_and_explains_with_ig_on_embeddings(live_client, token_model):
    pytest.importorskip("captum")
    tokenizer = token_model.tokenizer_path.read_bytes()
    response = register(live_client, token_model, CARD, tokenizer)
    assert response.status_code == 201, response.json
    assert response.json["card"]["text"]["tokenizer"] == "tokenizer.json"
    methods = {m["name"]: m for m in response.json["methods"]}
    assert methods["integrated_gradients"]["applies"], methods["integrated_gradients"]
    predicted = live_client.post("/v1/models/tickets-ids:predict", json={"instances": [TEXT]})
    assert predicted.status_code == 200
    expected = token_model.f()([TEXT])[0]
    assert predicted.json["predictions"][0]["scores"]["negative"] == pytest.approx(float(expected[0]), abs=1e-5)
    for method in ("integrated_gradients", "occlusion"):
        body = {"instances": [TEXT], "method": method, "targets": ["negative"], "wait": 60}
        answer = live_client.post("/v1/models/tickets-ids:explain", json=body)
        result = answer.json if answer.status_code == 200 else poll(live_client, answer.headers["Location"])["result"]
        (target,) = result["explanations"][0]["targets"]
        words = target["attributions"]
        top = max(words, key=lambda w: w["attribution"])
        assert top["token"] == "awful" and TEXT[top["start"] : top["end"]] == "awful", (method, words)
        assert "awful" in target["highlight_html"]
        if method == "integrated_gradients":
            delta = abs(target["quality"]["convergence_delta"])
            assert abs(target["quality"]["additivity_residual"]) <= delta + 2e-4
            assert result["parameters"]["baseline"] == "padding"


@pytest.mark.parametrize(
    ("tokenizer", "status", "code"),
    [
        (b"not json at all", 422, "invalid_tokenizer"),
        (json.dumps({"model": {"type": "NoSuchModel"}}).encode(), 422, "invalid_tokenizer"),
        (b"\xff\xfe\x00", 422, "invalid_tokenizer"),
        (None, 422, "missing_field"),
    ],
)
def test_bad_tokenizers_are_refused_with_codes(client, token_model, tokenizer, status, code):
    response = register(client, token_model, CARD, tokenizer)
    assert response.status_code == status and response.json["code"] == code, response.json
    assert response.json["field"] == "tokenizer"


def test_an_oversized_tokenizer_is_413(settings, redis_conn, api_key, token_model):
    from service.app import create_app

    application = create_app(settings.replace(max_tokenizer_bytes=1000))
    application.testing = True
    application.test_client_class = ValidatingClient
    client = authorize(application.test_client(), api_key)
    response = register(client, token_model, CARD, token_model.tokenizer_path.read_bytes())
    assert response.status_code == 413 and response.json["code"] == "tokenizer_too_large"


def test_a_tokenizer_without_a_token_card_is_refused(client, token_model):
    tfidf = deep_models.tfidf_classifier()
    card = {**CARD, "name": "strings", "text": {"max_chars": 500}}
    data = {
        "model": (io.BytesIO(tfidf.onnx_bytes), "model.onnx"),
        "card": json.dumps(card),
        "tokenizer": (io.BytesIO(token_model.tokenizer_path.read_bytes()), "tokenizer.json"),
    }
    response = client.post("/v1/models", data=data, content_type="multipart/form-data")
    assert response.status_code == 422 and response.json["field"] == "card.text.tokenizer"


def test_a_card_whose_max_length_disagrees_with_the_graph_is_refused(client, token_model):
    # The export fixed L at 16 (only the batch axis is dynamic); a card declaring 12 disagrees.
    card = {**CARD, "text": {**CARD["text"], "max_length": 12}}
    response = register(client, token_model, card, token_model.tokenizer_path.read_bytes())
    assert response.status_code == 422 and response.json["code"] == "card_mismatch"
    assert response.json["field"] == "card.text.max_length"

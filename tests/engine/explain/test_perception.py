"""Image and text explanations as JSON: maps, heatmaps, tokens, highlights and faithfulness on every answer."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from engine.errors import InvalidRequest
from engine.explain.perception import IMAGE_METHODS, TEXT_METHODS, PerceptionModel, choose_auto, explain_inputs
from engine.explain.visual import decode_map
from engine.models.text import TextSpec
from tests import deep_models

FAST = {"num_samples": 300, "max_evals": 200, "steps": 32, "samples": 8, "patch": 2, "stride": 1, "seed": 0}


def image_model() -> PerceptionModel:
    cnn = deep_models.digits_cnn()
    return PerceptionModel(
        kind="image",
        onnx_bytes=cnn.onnx_bytes,
        output="probabilities",
        output_names=[str(d) for d in range(10)],
        f=cnn.f(),
        image=cnn.spec,
        reference=cnn.reference(),
        reference_inputs=cnn.spec.to_model(cnn.images[:16]),
        background=cnn.images[100:140],
    )


def params_for(method: str) -> dict:
    keys = {
        "occlusion": ("patch", "stride"),
        "lime": ("num_samples",),
        "partition": ("max_evals",),
        "integrated_gradients": ("steps",),
        "smoothgrad": ("samples",),
    }.get(method, ())
    return {"seed": 0, **{k: FAST[k] for k in keys}}


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_answers_carry_a_map_a_png_and_faithfulness(method):
    pytest.importorskip("captum")
    model = image_model()
    cnn = deep_models.digits_cnn()
    (targets,), info = explain_inputs(model, method, params_for(method), [cnn.images[0]], [[int(cnn.labels[0])]])
    (entry,) = targets
    json.dumps(entry)  # plain JSON all the way down
    assert entry["target"] == str(cnn.labels[0])
    assert decode_map(entry["map"]).shape == (8, 8)
    assert Image.open(io.BytesIO(base64.b64decode(entry["heatmap_png"]))).format == "PNG"
    faith = entry["faithfulness"]
    assert faith["deletion"]["curve"][0] == pytest.approx(entry["output_value"], abs=1e-6) or method == "lime"
    assert {"auc", "random_auc", "curve", "random_curve"} <= set(faith["insertion"])
    if method in ("integrated_gradients", "lime", "partition"):
        assert "base_value" in entry and "additivity_residual" in entry["quality"]
    else:
        assert "base_value" not in entry
    assert isinstance(info, dict)


def test_faithfulness_beats_random_for_integrated_gradients_on_most_digits():
    """The curves are per answer: IG's maps beat chance on most digits (Grad-CAM's coarse 8×8 maps often do not)."""
    pytest.importorskip("captum")
    model = image_model()
    cnn = deep_models.digits_cnn()
    images = [cnn.images[i] for i in range(10)]
    answers, _ = explain_inputs(
        model, "integrated_gradients", {"seed": 0, "steps": 32}, images, [[int(cnn.labels[i])] for i in range(10)]
    )
    wins = sum(
        answer[0]["faithfulness"]["deletion"]["auc"] < answer[0]["faithfulness"]["deletion"]["random_auc"]
        for answer in answers
    )
    assert wins >= 8


@pytest.mark.parametrize("method", ["lime", "partition", "occlusion"])
def test_text_answers_carry_tokens_with_offsets_and_a_highlight(method):
    text_model = deep_models.tfidf_classifier()
    model = PerceptionModel(
        kind="text",
        onnx_bytes=text_model.onnx_bytes,
        output="probabilities",
        output_names=["negative", "positive"],
        f=text_model.f(),
        text=TextSpec(),
    )
    text = "the food was excellent, with friends"
    (targets,), _ = explain_inputs(model, method, params_for(method), [text], [[1]])
    (entry,) = targets
    json.dumps(entry)
    tokens = entry["attributions"]
    assert [t["token"] for t in tokens] == ["the", "food", "was", "excellent", "with", "friends"]
    assert all(text[t["start"] : t["end"]] == t["token"] for t in tokens)
    assert max(tokens, key=lambda t: t["attribution"])["token"] == "excellent"
    assert ">excellent</mark>" in entry["highlight_html"]
    assert entry["faithfulness"]["better_than_random"] is True


def test_string_text_models_refuse_integrated_gradients_and_image_methods():
    text_model = deep_models.tfidf_classifier()
    model = PerceptionModel("text", text_model.onnx_bytes, "probabilities", ["n", "p"], text_model.f(), text=TextSpec())
    assert "integrated_gradients" in TEXT_METHODS
    for method, code in (
        ("integrated_gradients", "method_not_supported_for_model"),
        ("grad_cam", "method_not_applicable"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            explain_inputs(model, method, {"seed": 0}, ["some text"], [[0]])
        assert caught.value.code == code


def test_auto_picks_per_input_kind_and_says_why():
    assert choose_auto("image", True, True)[0] == "grad_cam"
    assert choose_auto("image", False, False)[0] == "occlusion"
    method, reason = choose_auto("text", False, False)
    assert method == "partition" and "additive" in reason

"""Text methods on a TF-IDF + logistic regression classifier trained in this session (skl2onnx, string input).

Sentences are neutral filler with one planted sentiment word that decides
the label: ``lime``, ``partition`` and ``occlusion`` must give that word the
largest attribution with the right sign, and the highlight HTML must show it.
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.explain.faithfulness import faithfulness, text_composer
from engine.explain.visual import highlight_html
from engine.methods import lime_text, occlusion, partition
from engine.models.text import words
from tests import deep_models

METHODS = ("lime", "partition", "occlusion")
CASES = [
    ("we ordered from the menu and the food was excellent with friends", "excellent", 1),
    ("the table arrived near the station and it was awful today", "awful", 0),
    ("on a monday evening in town the service felt dreadful", "dreadful", 0),
    ("delightful food at our table after we ordered", "delightful", 1),
]


@pytest.fixture(scope="module")
def model() -> deep_models.TextModel:
    return deep_models.tfidf_classifier()


def explain(method: str, model: deep_models.TextModel, text: str, targets: list[int], seed: int = 0):
    f = model.f()
    if method == "lime":
        return lime_text.lime_text(f, text, targets, num_samples=800, seed=seed)
    if method == "partition":
        return partition.partition_text(f, text, targets, max_evals=300, seed=seed)
    return occlusion.occlude_text(f, text, targets)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("text", "planted", "label"), CASES)
def test_the_planted_word_is_top_with_the_right_sign(model, method, text, planted, label):
    assert int(np.argmax(model.f()([text])[0])) == label
    tokens = words(text)
    for target, sign in ((label, 1.0), (1 - label, -1.0)):
        result = explain(method, model, text, [target])
        values = result.maps[0]
        assert values.shape == (len(tokens),)
        top = int(np.argmax(sign * values))
        assert tokens[top].text == planted and sign * values[top] > 0
        # and it dominates: larger than every other word's magnitude
        others = np.delete(np.abs(values), top)
        assert abs(values[top]) > others.max()


@pytest.mark.parametrize("method", METHODS)
def test_highlight_html_marks_the_planted_word(model, method):
    text, planted, label = CASES[0]
    result = explain(method, model, text, [label])
    snippet = highlight_html(text, words(text), result.maps[0].tolist())
    assert f">{planted}</mark>" in snippet
    assert snippet.count("<mark") == len(words(text))


def test_additive_text_methods_report_their_residual(model):
    text, _, label = CASES[1]
    for method in ("lime", "partition"):
        residual = explain(method, model, text, [label]).additivity_residual()
        assert residual is not None and abs(residual[0]) < 1e-6
    assert explain("occlusion", model, text, [label]).additivity_residual() is None


def test_partition_base_value_is_the_fully_masked_text(model):
    text, _, label = CASES[0]
    result = explain("partition", model, text, [label])
    masked = model.f()(["..."])[0, label]
    assert result.base_values[0] == pytest.approx(masked, abs=1e-6)


@pytest.mark.parametrize("method", ["lime", "partition"])
def test_same_seed_same_answer(model, method):
    text = CASES[2][0]
    first = explain(method, model, text, [0], seed=3).maps
    explain(method, model, CASES[3][0], [1], seed=8)
    np.testing.assert_array_equal(explain(method, model, text, [0], seed=3).maps, first)


def test_repeated_words_get_one_attribution_per_position(model):
    text = "excellent food and excellent service"
    result = explain("occlusion", model, text, [1])
    assert result.maps.shape == (1, 5)
    assert result.maps[0, 0] > 0 and result.maps[0, 3] > 0


def test_faithfulness_of_occlusion_beats_a_random_order(model):
    text, _, label = CASES[0]
    f = model.f()
    result = explain("occlusion", model, text, [label])
    report = faithfulness(text_composer(f, text), result.maps[0], label, steps=len(words(text)), seed=0)
    assert report["deletion"]["auc"] < report["deletion"]["random_auc"]
    assert report["insertion"]["auc"] > report["insertion"]["random_auc"]
    assert report["better_than_random"] is True
    assert report["deletion"]["curve"][0] == pytest.approx(f([text])[0, label])


def test_integrated_gradients_on_embeddings_finds_the_planted_word(tmp_path_factory):
    """A token-id model (embedding lookup, mean, linear) with a local tokenizer.json: IG per word, complete."""
    pytest.importorskip("captum")
    from engine.methods import gradients

    model = deep_models.token_classifier(tmp_path_factory.mktemp("tokens"))
    encoder = model.encoder()
    f = model.f()
    sess = deep_models.session(model.onnx_bytes)
    check = encoder.encode(model.texts[:16])[0]
    converted = gradients.convert(
        model.onnx_bytes,
        "probabilities",
        check_inputs=check,
        reference=lambda ids: sess.run(None, {"input_ids": ids})[0],
        token_ids=True,
    )
    for text, planted, label in CASES:
        result = gradients.token_integrated_gradients(converted, encoder, f, text, [label, 1 - label], steps=64)
        tokens = words(text)
        assert result.maps.shape == (2, len(tokens))
        top = int(np.argmax(result.maps[0]))
        assert tokens[top].text == planted and result.maps[0, top] > 0
        assert int(np.argmin(result.maps[1])) == top
        residual = result.additivity_residual()
        for j in range(2):
            assert abs(residual[j]) <= abs(result.quality[j]["convergence_delta"]) + 2 * gradients.TOLERANCE


def test_a_string_model_has_no_embedding_to_differentiate(model):
    pytest.importorskip("captum")
    from engine.errors import InvalidRequest
    from engine.methods import gradients

    with pytest.raises(InvalidRequest) as caught:
        gradients.convert(
            model.onnx_bytes, "probabilities", check_inputs=np.zeros((1, 1)), reference=lambda x: x, token_ids=True
        )
    assert caught.value.code == "method_not_supported_for_model" and "embedding" in caught.value.detail

"""Every image method on a CNN trained in this session on the bundled 8×8 digits.

Checks from issue 11: each method returns a map of the input's size and a
PNG that decodes; deleting the top-attributed 10 % of pixels lowers the
target score more than deleting random 10 % (20 images); integrated
gradients' completeness holds within the reported delta; re-initialising
the last layers changes Grad-CAM and saliency maps (model randomisation
sanity check); the same seed gives the same map.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("captum")
pytest.importorskip("onnx2torch")

from PIL import Image  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from engine.explain.visual import decode_map, encode_map, heatmap_png  # noqa: E402
from engine.methods import gradients, lime_image, occlusion, partition  # noqa: E402
from engine.methods.maps import baseline_image  # noqa: E402
from tests import deep_models  # noqa: E402

METHODS = ("grad_cam", "saliency", "integrated_gradients", "smoothgrad", "occlusion", "lime", "partition")


@pytest.fixture(scope="module")
def cnn() -> deep_models.ImageModel:
    return deep_models.digits_cnn()


def converted_of(model: deep_models.ImageModel) -> gradients.Converted:
    return gradients.convert(
        model.onnx_bytes,
        "probabilities",
        check_inputs=model.spec.to_model(model.images[:32]),
        reference=model.reference(),
    )


def explain(method: str, model: deep_models.ImageModel, image: np.ndarray, targets: list[int], seed: int = 0):
    f = model.f()
    if method == "occlusion":
        return occlusion.occlude_image(f, image, targets, patch=2, stride=1)
    if method == "lime":
        return lime_image.lime_image(f, image, targets, num_samples=500, segments=16, seed=seed)
    if method == "partition":
        return partition.partition_image(f, image, targets, max_evals=300, seed=seed)
    converted = converted_of(model)
    if method == "grad_cam":
        return gradients.grad_cam(converted, model.spec, f, image, targets)
    if method == "saliency":
        return gradients.saliency(converted, model.spec, f, image, targets)
    if method == "smoothgrad":
        return gradients.smoothgrad(converted, model.spec, f, image, targets, seed=seed)
    return gradients.integrated_gradients(converted, model.spec, f, image, targets, steps=64)


def test_the_conversion_matches_onnxruntime_and_lists_the_convolutions(cnn):
    converted = converted_of(cnn)
    # Converted once per process and model: an earlier test may have made (and checked) it on its own rows.
    assert converted.max_abs_diff < 1e-5 and converted.checked_rows >= 16
    assert converted.layers == ["/0/Conv", "/2/Conv"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_returns_an_input_sized_map_and_a_png(cnn, method):
    image, target = cnn.images[0], int(cnn.labels[0])
    result = explain(method, cnn, image, [target, (target + 1) % 10])
    assert result.maps.shape == (2, 8, 8) and np.all(np.isfinite(result.maps))
    assert np.abs(result.maps[0]).max() > 0
    encoded = encode_map(result.maps[0])
    np.testing.assert_allclose(decode_map(encoded), result.maps[0], rtol=1e-3, atol=1e-3 * np.abs(result.maps[0]).max())
    png = Image.open(io.BytesIO(base64.b64decode(heatmap_png(image, result.maps[0], signed=result.signed))))
    assert png.format == "PNG" and png.size[0] >= 128 and png.mode == "RGB"


@pytest.mark.parametrize("method", METHODS)
def test_deleting_top_pixels_hurts_more_than_random_pixels(cnn, method):
    """Over 20 images, zeroing the top 10 % of pixels by attribution lowers the target more than random 10 %."""
    f = cnn.f()
    rng = np.random.default_rng(0)
    k = round(0.1 * 64)
    top_drops, random_drops = [], []
    for i in range(20):
        image, target = cnn.images[i], int(cnn.labels[i])
        order = np.argsort(-explain(method, cnn, image, [target]).maps[0].reshape(-1), kind="stable")
        variants = [image]
        for chosen in [order[:k]] + [rng.permutation(64)[:k] for _ in range(10)]:
            flat = image.reshape(64, 1).copy()
            flat[chosen] = 0.0
            variants.append(flat.reshape(8, 8, 1))
        scores = f(np.stack(variants))[:, target]
        top_drops.append(scores[0] - scores[1])
        random_drops.append(scores[0] - scores[2:].mean())
    assert np.mean(top_drops) > np.mean(random_drops)


def test_integrated_gradients_completeness_holds_within_the_reported_delta(cnn):
    """Σ attributions = f(x) − f(baseline) on onnxruntime's outputs, up to Captum's delta and the conversion error."""
    f = cnn.f()
    for i in range(5):
        image, target = cnn.images[i], int(cnn.labels[i])
        for baseline in ("black", "blurred"):
            result = explain_ig(cnn, image, target, baseline)
            reference = baseline_image(image, baseline, None)
            expected = f(image[None])[0, target] - f(reference[None])[0, target]
            delta = result.quality[0]["convergence_delta"]
            # The conversion may differ from onnxruntime by up to 1e-4 per output, at x and at the baseline.
            assert abs(expected - result.maps[0].sum()) <= abs(delta) + 2 * gradients.TOLERANCE
            assert result.additivity_residual()[0] == pytest.approx(expected - result.maps[0].sum(), abs=1e-9)


def explain_ig(model: deep_models.ImageModel, image: np.ndarray, target: int, baseline: str):
    return gradients.integrated_gradients(
        converted_of(model), model.spec, model.f(), image, [target], baseline=baseline, steps=128
    )


def test_background_baseline_needs_background_and_uses_its_mean(cnn):
    f = cnn.f()
    background = cnn.images[100:150]
    result = gradients.integrated_gradients(
        converted_of(cnn), cnn.spec, f, cnn.images[0], [0], baseline="background", background=background
    )
    assert result.base_values[0] == pytest.approx(f(background.mean(axis=0)[None])[0, 0])
    with pytest.raises(Exception) as caught:
        gradients.integrated_gradients(converted_of(cnn), cnn.spec, f, cnn.images[0], [0], baseline="background")
    assert getattr(caught.value, "code", None) == "background_required"


@pytest.mark.parametrize("method", ["grad_cam", "saliency"])
def test_randomising_the_last_layers_changes_the_map(cnn, method):
    """Adebayo et al.'s sanity check: a map that ignores the model's weights would not change."""
    randomised = deep_models.randomised_cnn()
    correlations = []
    for i in range(10):
        image, target = cnn.images[i], int(cnn.labels[i])
        trained = explain(method, cnn, image, [target]).maps[0].reshape(-1)
        reinit = explain(method, randomised, image, [target]).maps[0].reshape(-1)
        correlations.append(spearmanr(trained, reinit).statistic)
    assert np.nanmean(correlations) < 0.5


@pytest.mark.parametrize("method", ["smoothgrad", "lime", "partition"])
def test_same_seed_same_map(cnn, method):
    image = cnn.images[3]
    first = explain(method, cnn, image, [3], seed=5).maps
    explain(method, cnn, cnn.images[4], [4], seed=9)  # other work in between must not leak into the next answer
    np.testing.assert_array_equal(explain(method, cnn, image, [3], seed=5).maps, first)


def test_grad_cam_takes_a_named_layer_and_refuses_unknown_ones(cnn):
    converted = converted_of(cnn)
    early = gradients.grad_cam(converted, cnn.spec, cnn.f(), cnn.images[0], [0], layer="/0/Conv")
    assert early.info["layer"] == "/0/Conv" and early.maps.shape == (1, 8, 8)
    with pytest.raises(Exception) as caught:
        gradients.grad_cam(converted, cnn.spec, cnn.f(), cnn.images[0], [0], layer="/9/Conv")
    assert getattr(caught.value, "code", None) == "invalid_parameter"


def test_additive_methods_report_a_small_residual(cnn):
    for method in ("lime", "partition"):
        result = explain(method, cnn, cnn.images[0], [int(cnn.labels[0])])
        residual = result.additivity_residual()
        assert residual is not None and abs(residual[0]) < 1e-6
    assert explain("occlusion", cnn, cnn.images[0], [0]).additivity_residual() is None


def test_occlusion_patch_must_fit():
    model = deep_models.digits_cnn()
    with pytest.raises(Exception) as caught:
        occlusion.occlude_image(model.f(), model.images[0], [0], patch=9)
    assert getattr(caught.value, "field", None) == "parameters.patch"

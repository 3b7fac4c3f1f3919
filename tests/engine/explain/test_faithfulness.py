"""Deletion and insertion curves against a random order, on a real ONNX model."""

from __future__ import annotations

import numpy as np
import pytest

from engine.explain.faithfulness import faithfulness, image_composer
from engine.methods import occlusion
from tests import deep_models


def linear_scores(weights: np.ndarray):
    """A model whose output is the sum of its kept features' weights (ground truth for the curves)."""
    return lambda keep: (keep * weights).sum(axis=1, keepdims=True)


def test_the_true_order_gives_the_extreme_curves():
    weights = np.array([5.0, 1.0, 3.0, 0.5, 2.0, 0.0])
    report = faithfulness(linear_scores(weights), weights, 0, steps=6, random_orders=8, seed=1)
    assert report["deletion"]["curve"] == pytest.approx([11.5, 6.5, 3.5, 1.5, 0.5, 0.0, 0.0])
    assert report["insertion"]["curve"] == pytest.approx([0.0, 5.0, 8.0, 10.0, 11.0, 11.5, 11.5])
    assert report["deletion"]["auc"] < report["deletion"]["random_auc"]
    assert report["insertion"]["auc"] > report["insertion"]["random_auc"]
    assert report["better_than_random"] is True
    # the reversed map is worse than chance, and says so
    worse = faithfulness(linear_scores(weights), -weights, 0, steps=6, seed=1)
    assert worse["better_than_random"] is False


def test_same_seed_same_random_curves():
    weights = np.arange(10.0)
    first = faithfulness(linear_scores(weights), weights, 0, seed=4)
    assert faithfulness(linear_scores(weights), weights, 0, seed=4) == first
    assert (
        faithfulness(linear_scores(weights), weights, 0, seed=5)["deletion"]["random_curve"]
        != first["deletion"]["random_curve"]
    )


def test_occlusion_maps_of_the_digits_cnn_beat_random_orders():
    pytest.importorskip("torch")
    model = deep_models.digits_cnn()
    f = model.f()
    wins = 0
    for i in range(10):
        image, target = model.images[i], int(model.labels[i])
        result = occlusion.occlude_image(f, image, [target], patch=2, stride=1)
        report = faithfulness(image_composer(f, image, np.zeros_like(image)), result.maps[0], target, seed=i)
        assert report["deletion"]["curve"][0] == pytest.approx(f(image[None])[0, target])
        assert len(report["fractions"]) == report["steps"] + 1 == 11
        wins += report["better_than_random"]
    assert wins >= 8

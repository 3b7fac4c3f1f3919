"""Faithfulness of a map: deletion and insertion curves against a random order.

Deletion removes the most-attributed features first, step by step, and
records the explained output; a faithful map makes it fall fast, so its area
under the curve is *small*. Insertion starts from nothing and restores the
most-attributed features first; a faithful map makes the output rise fast,
so its area is *large* (Petsiuk et al., RISE, 2018). The same curves for
random orders (seeded, averaged) say what chance gives on this very input,
so a user sees whether the map beats it.

Features are pixels of an image (all channels together) or words of a text;
:func:`faithfulness` is given ``compose(keep) -> model inputs`` and never
knows which. Every curve point of every order goes through the model in one
batched call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.arrays import FloatArray

BoolArray = npt.NDArray[np.bool_]


def faithfulness(
    score: Callable[[BoolArray], FloatArray],
    attribution: FloatArray,
    target: int,
    *,
    steps: int = 10,
    random_orders: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Deletion and insertion curves of one map, and the same for random orders.

    Args:
        score: ``keep (m, d) bool -> outputs (m, k)``: builds the ``m`` inputs
            that keep the marked features (the rest removed) and scores them.
        attribution: ``(d,)`` one value per feature; larger means more in favour.
        target: The output column the map explains.
        steps: Curve points after the start (fractions ``1/steps … 1``).
        random_orders: Random orders averaged for the reference curves.
        seed: Seed of the random orders.

    Returns:
        ``{"steps", "fractions", "deletion": {"curve", "auc", "random_curve",
        "random_auc"}, "insertion": {…}, "better_than_random"}``, AUCs by the
        trapezoid rule over the removed (restored) fraction in [0, 1].
    """
    values = np.asarray(attribution, dtype=np.float64).reshape(-1)
    d = len(values)
    # Stable sort on the negated values: ties keep feature order, so equal maps give equal curves.
    orders = [np.argsort(-values, kind="stable")]
    rng = np.random.default_rng(seed)
    orders += [rng.permutation(d) for _ in range(random_orders)]
    counts = np.unique(np.ceil(np.linspace(0, 1, steps + 1) * d).astype(int))
    masks = []
    for order in orders:
        for deleting in (True, False):
            for count in counts:
                chosen = np.zeros(d, dtype=bool)
                chosen[order[:count]] = True
                masks.append(~chosen if deleting else chosen)
    outputs = np.asarray(score(np.stack(masks)), dtype=np.float64)[:, target]
    curves = outputs.reshape(len(orders), 2, len(counts))
    fractions = counts / max(d, 1)
    deletion, insertion = curves[0, 0], curves[0, 1]
    random_deletion = curves[1:, 0].mean(axis=0)
    random_insertion = curves[1:, 1].mean(axis=0)

    def auc(curve: FloatArray) -> float:
        return float(np.trapezoid(curve, fractions))

    out: dict[str, Any] = {
        "steps": len(counts) - 1,
        "fractions": fractions.tolist(),
        "random_orders": random_orders,
        "deletion": {
            "curve": deletion.tolist(),
            "auc": auc(deletion),
            "random_curve": random_deletion.tolist(),
            "random_auc": auc(random_deletion),
        },
        "insertion": {
            "curve": insertion.tolist(),
            "auc": auc(insertion),
            "random_curve": random_insertion.tolist(),
            "random_auc": auc(random_insertion),
        },
    }
    out["better_than_random"] = bool(
        out["deletion"]["auc"] < out["deletion"]["random_auc"]
        and out["insertion"]["auc"] > out["insertion"]["random_auc"]
    )
    return out


def image_composer(
    f: Callable[[FloatArray], FloatArray], image: FloatArray, baseline: FloatArray
) -> Callable[[BoolArray], FloatArray]:
    """``score`` for :func:`faithfulness` over the pixels of a unit image ``(H, W, C)``.

    A removed pixel takes the baseline image's value in every channel.
    """
    h, w, _ = image.shape

    def score(keep: BoolArray) -> FloatArray:
        kept = keep.reshape(-1, h, w, 1)
        return np.asarray(f(np.where(kept, image[None], baseline[None])), dtype=np.float64)

    return score


def text_composer(f: Callable[[list[str]], FloatArray], text: str) -> Callable[[BoolArray], FloatArray]:
    """``score`` for :func:`faithfulness` over the words of a text (removed words are cut out)."""
    from engine.models.text import remove_words, words

    tokens = words(text)

    def score(keep: BoolArray) -> FloatArray:
        return np.asarray(f([remove_words(text, tokens, row) for row in keep]), dtype=np.float64)

    return score

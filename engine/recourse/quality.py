"""What every counterfactual carries: validity checked through the model, its changes, proximity, sparsity,
plausibility; and the diversity of a row's set."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.models.card import ModelCard
from engine.models.rows import row_values
from engine.recourse.goal import Goal
from engine.recourse.space import Space
from engine.serving import format_predictions


def describe(
    space: Space, card: ModelCard, x: FloatArray, C: FloatArray, scores: FloatArray, goal: Goal
) -> list[dict[str, Any]]:
    """The JSON of each counterfactual ``C[i]`` of row ``x``, with its quality.

    Args:
        space: The feasible moves (scales, background, constraints).
        card: The model card (names, categories).
        x: ``(d,)`` the row.
        C: ``(n, d)`` its counterfactuals.
        scores: ``(n, k)`` the model's outputs on ``C``, from a fresh onnxruntime call (``valid`` reads them).
        goal: The outcome wanted.
    """
    if len(C) == 0:
        return []
    proximity = space.cost(x, C)
    reached = goal.reached(scores)
    predictions = format_predictions(scores, card.class_names)
    nearest = nearest_background(space, C)
    before = row_values(x, card)
    out: list[dict[str, Any]] = []
    for i, c in enumerate(C):
        after = row_values(c, card)
        changed = np.flatnonzero(c != x)
        inside = bool(np.all((c >= space.seen_low - 1e-12) & (c <= space.seen_high + 1e-12)))
        out.append(
            {
                "instance": dict(zip(space.names, after, strict=True)),
                "prediction": predictions[i],
                "changes": [{"feature": space.names[j], "from": before[j], "to": after[j]} for j in changed],
                "quality": {
                    "valid": bool(reached[i]),
                    "proximity": float(proximity[i]),
                    "sparsity": int(changed.size),
                    "plausibility": {
                        "nearest_background_distance": float(nearest[i]),
                        "in_background_range": inside,
                    },
                    "constraints_kept": not space.respects(x, c),
                },
            }
        )
    return out


def nearest_background(space: Space, C: FloatArray) -> FloatArray:
    """MAD-scaled L1 distance from each row of ``C`` to its nearest background row."""
    return np.array([float(space.cost(c, space.background).min()) for c in C], dtype=np.float64)


def diversity(space: Space, C: FloatArray) -> dict[str, Any]:
    """How different a row's counterfactuals are: their mean pairwise distance (MAD-scaled L1, 0 for fewer
    than two) and the features any of them changes."""
    n = len(C)
    pairs = [float(space.cost(C[i], C[j : j + 1])[0]) for i in range(n) for j in range(i + 1, n)]
    return {"count": n, "mean_pairwise_distance": float(np.mean(pairs)) if pairs else 0.0}


def features_changed(space: Space, x: FloatArray, C: FloatArray) -> list[str]:
    """The features any counterfactual of ``x`` changes, in model order."""
    if len(C) == 0:
        return []
    return [space.names[j] for j in np.flatnonzero(np.any(C != x, axis=0))]

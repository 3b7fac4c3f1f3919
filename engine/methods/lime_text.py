"""LIME on words (``lime.lime_text.LimeTextExplainer``).

Words are the ``\\w+`` tokens of :mod:`engine.models.text`, each position its
own feature (``bow=False``), so attributions line up with the tokens and
their character offsets even when a word repeats. A perturbed text cuts the
hidden words out (``mask_string=""``), as occlusion and the faithfulness
curves do. The surrogate's intercept is the base value and its prediction
at the full text the output value; the model's own output and R² go to
``quality``. A fresh explainer seeded with ``seed`` per explanation makes
the answer reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from lime.lime_text import LimeTextExplainer

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, OnnxplainError
from engine.methods.maps import MapAttribution, TextFn
from engine.models.text import words


def _split(text: str) -> list[str]:
    return [token.text for token in words(text)]


def lime_text(f: TextFn, text: str, targets: list[int], *, num_samples: int = 1000, seed: int = 0) -> MapAttribution:
    """Explain one text with LIME, one attribution per word (in order).

    Args:
        f: Batch scoring function over texts.
        text: The text.
        targets: Output columns to explain.
        num_samples: Perturbed texts the surrogate is fitted on.
        seed: Seeds the perturbations.
    """
    tokens = words(text)

    def classifier(texts: Sequence[str]) -> FloatArray:
        return np.asarray(f(list(texts)), dtype=np.float64)

    explainer = LimeTextExplainer(bow=False, split_expression=_split, mask_string="", random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explanation = explainer.explain_instance(
                text, classifier, labels=tuple(targets), num_features=len(tokens), num_samples=num_samples
            )
    except OnnxplainError:
        raise
    except Exception as exc:  # lime raises bare errors
        raise ExplanationFailed(f"lime failed: {type(exc).__name__}: {exc}") from exc
    full = np.asarray(f([text]), dtype=np.float64)[0]
    maps, base, local, quality = [], [], [], []
    for t in targets:
        weights = np.zeros(len(tokens))
        for feature, weight in explanation.local_exp[t]:
            weights[feature] = weight
        maps.append(weights)
        base.append(float(explanation.intercept[t]))
        local.append(float(base[-1] + weights.sum()))
        score = explanation.score[t] if isinstance(explanation.score, dict) else explanation.score
        quality.append({"score": float(score), "model_output": float(full[t])})
    return MapAttribution(
        list(targets),
        np.stack(maps),
        np.asarray(local),
        base_values=np.asarray(base),
        quality=quality,
        info={"num_samples": num_samples, "removal": "cut"},
    )

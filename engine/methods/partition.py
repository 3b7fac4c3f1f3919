"""shap's Partition explainer with an image or a text masker.

Partition SHAP recursively splits the features along a hierarchy (pixel
rectangles for images, a word clustering for texts) and computes Owen
values over it: additive (base value at everything masked, attributions
summing to ``output − base``), deterministic, and far cheaper than
exact Shapley values for many features.

* Images: ``shap.maskers.Image`` with a fixed mask image (black, blurred or
  the background mean, built here so no OpenCV is needed). shap's values
  per pixel and channel are summed over channels.
* Texts: ``shap.maskers.Text`` with a tokenizer that yields exactly the
  words of :mod:`engine.models.text` and their offsets, so attributions line
  up with the tokens; hidden words become ``mask_token`` (``"..."``, which a
  bag-of-words model ignores).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import shap

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, OnnxplainError
from engine.methods.maps import ImageFn, MapAttribution, TextFn, baseline_image
from engine.models.text import words


class WordTokenizer:
    """A shap text-masker tokenizer whose tokens are our words (``\\w+``) with their offsets."""

    def __call__(self, s: str, return_offsets_mapping: bool = True) -> dict[str, Any]:
        tokens = words(s)
        if not tokens:
            # As shap's SimpleTokenizer: no token for "", one empty token for a non-word string
            # (shap tokenizes its mask token "..." and needs one token back).
            return {"input_ids": [""], "offset_mapping": [(0, 0)]} if s else {"input_ids": [], "offset_mapping": []}
        out: dict[str, Any] = {"input_ids": [t.text for t in tokens]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(t.start, t.end) for t in tokens]
        return out


def _run(explainer: Any, x: Any, max_evals: int, batch_size: int, seed: int) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.random.seed(seed)  # shap draws from numpy's global state where it draws at all
            return explainer(x, max_evals=max_evals, batch_size=batch_size, silent=True)
    except OnnxplainError:
        raise
    except Exception as exc:  # shap raises bare errors
        raise ExplanationFailed(f"partition failed: {type(exc).__name__}: {exc}") from exc


def partition_image(
    f: ImageFn,
    image: FloatArray,
    targets: list[int],
    *,
    max_evals: int = 1000,
    baseline: str = "black",
    background: FloatArray | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> MapAttribution:
    """Owen values of one unit image ``(H, W, C)`` over shap's pixel hierarchy."""
    mask = baseline_image(image, baseline, background)
    masker = shap.maskers.Image(mask, image.shape)

    def model(batch: FloatArray) -> FloatArray:
        return np.asarray(f(np.asarray(batch, dtype=np.float64)), dtype=np.float64)[:, targets]

    explainer = shap.PartitionExplainer(model, masker)
    result = _run(explainer, image[None], max_evals, batch_size, seed)
    values = np.asarray(result.values, dtype=np.float64)[0]  # (H, W, C, t)
    maps = np.moveaxis(values.sum(axis=2), -1, 0)
    base = np.asarray(result.base_values, dtype=np.float64).reshape(-1)[: len(targets)]
    full = np.asarray(f(image[None]), dtype=np.float64)[0, targets]
    return MapAttribution(
        list(targets), maps, full, base_values=base, info={"max_evals": max_evals, "baseline": baseline}
    )


def partition_text(
    f: TextFn, text: str, targets: list[int], *, max_evals: int = 500, batch_size: int = 256, seed: int = 0
) -> MapAttribution:
    """Owen values of one text over shap's word clustering, one value per word (in order)."""
    masker = shap.maskers.Text(WordTokenizer(), mask_token="...", collapse_mask_token=True)

    def model(texts: Sequence[str]) -> FloatArray:
        return np.asarray(f([str(t) for t in texts]), dtype=np.float64)[:, targets]

    explainer = shap.PartitionExplainer(model, masker)
    result = _run(explainer, [text], max_evals, batch_size, seed)
    values = np.asarray(result.values[0], dtype=np.float64).reshape(len(words(text)), len(targets))
    base = np.asarray(result.base_values, dtype=np.float64).reshape(-1)[: len(targets)]
    full = np.asarray(f([text]), dtype=np.float64)[0, targets]
    return MapAttribution(
        list(targets), values.T.copy(), full, base_values=base, info={"max_evals": max_evals, "mask_token": "..."}
    )

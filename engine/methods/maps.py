"""What image and text methods take and return: one input, a map per target.

Image methods see unit images (``engine.models.image``) and a batch scoring
function ``f(images (n, H, W, C)) -> scores (n, k)``; text methods see one
string, its words, and ``f(texts) -> scores (n, k)``. onnxruntime sits behind
``f``, so the methods are framework-free and evaluate perturbations in large
batches. Their answer is a :class:`MapAttribution`: for each explained output
a map at the input's resolution (``(H, W)``) or one value per word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest

ImageFn = Callable[[FloatArray], FloatArray]
"""Unit images ``(n, H, W, C)`` → explained outputs ``(n, k)``."""
TextFn = Callable[[Sequence[str]], FloatArray]
"""Texts → explained outputs ``(n, k)``."""


@dataclass
class MapAttribution:
    """One input's attributions, one map per explained target.

    Attributes:
        targets: The explained output columns.
        maps: ``(t, H, W)`` for an image or ``(t, words)`` for a text.
        output_values: ``(t,)`` the output the maps explain (the model's, or
            LIME's surrogate at the input).
        base_values: ``(t,)`` the output at the method's reference, for
            methods whose maps sum to ``output - base``; ``None`` otherwise.
        quality: One dict per target (e.g. ``convergence_delta``, LIME's ``score``).
        info: Method facts for the response's ``parameters`` (layer, baseline, segments).
        signed: Whether the maps carry a sign (saliency and Grad-CAM do not).
    """

    targets: list[int]
    maps: FloatArray
    output_values: FloatArray
    base_values: FloatArray | None = None
    quality: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    signed: bool = True

    def additivity_residual(self) -> list[float] | None:
        """``output - base - Σ map`` per target for additive methods, else ``None``."""
        if self.base_values is None:
            return None
        sums = self.maps.reshape(len(self.targets), -1).sum(axis=1)
        return [float(r) for r in self.output_values - self.base_values - sums]


def scores_in_batches(f: Callable[[Any], FloatArray], items: Any, batch_size: int) -> FloatArray:
    """Evaluate ``f`` on ``items`` (an array or a list) ``batch_size`` at a time and stack the outputs."""
    parts = [np.asarray(f(items[i : i + batch_size]), dtype=np.float64) for i in range(0, len(items), batch_size)]
    return np.concatenate(parts, axis=0)


def baseline_image(image: FloatArray, kind: str, background: FloatArray | None, *, sigma: float = 2.0) -> FloatArray:
    """The reference image a method removes information towards.

    Args:
        image: The unit image ``(H, W, C)``.
        kind: ``black`` (zeros), ``blurred`` (a Gaussian blur of the image,
            ``sigma`` pixels) or ``background`` (the mean background image).
        background: Background unit images ``(m, H, W, C)``, for ``background``.
        sigma: Blur radius for ``blurred``.

    Raises:
        InvalidRequest: ``background_required`` when ``background`` is asked without images.
    """
    if kind == "black":
        return np.zeros_like(image)
    if kind == "blurred":
        from scipy.ndimage import gaussian_filter

        blurred: FloatArray = np.asarray(
            gaussian_filter(image, sigma=(sigma, sigma, 0), mode="nearest"), dtype=np.float64
        )
        return blurred
    if kind == "background":
        if background is None or len(background) == 0:
            raise InvalidRequest(
                "baseline 'background' needs background images", code="background_required", field="parameters.baseline"
            )
        mean: FloatArray = np.asarray(background, dtype=np.float64).mean(axis=0)
        return mean
    raise InvalidRequest(f"unknown baseline {kind!r}", code="invalid_parameter", field="parameters.baseline")

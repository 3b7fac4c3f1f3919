"""LIME on superpixels (``lime.lime_image.LimeImageExplainer``, scikit-image segmentation).

The image is cut into superpixels (SLIC by default, or quickshift /
felzenszwalb), random subsets are hidden (black, or each superpixel's mean
colour), and a weighted linear surrogate is fitted on which superpixels were
present. The map is at the input's resolution; the surrogate's intercept is the base value and
its prediction at the full image the output value (additive by
construction: each pixel holds its superpixel's weight divided by the
superpixel's size, so the map sums to the surrogate's total; the model's own output and the fit's R² go to ``quality``).

A fresh explainer with ``random_state=seed`` is built for every explanation
(LIME keeps one random state that advances between calls), so the same seed
gives the same map.
"""

from __future__ import annotations

import warnings

import lime.lime_image
import numpy as np
from lime.lime_image import LimeImageExplainer
from lime.wrappers.scikit_image import SegmentationAlgorithm

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, InvalidRequest, OnnxplainError
from engine.methods.maps import ImageFn, MapAttribution

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")

# lime 0.2.0.1 wraps every perturbation loop in a tqdm bar written to stderr, with no switch to turn it
# off; in a worker that is a screenful of log noise per explanation, so its module-level name is bypassed.
lime.lime_image.tqdm = lambda iterable, *args, **kwargs: iterable


def lime_image(
    f: ImageFn,
    image: FloatArray,
    targets: list[int],
    *,
    num_samples: int = 1000,
    segments: int = 16,
    segmentation: str = "slic",
    hide: str = "black",
    seed: int = 0,
    batch_size: int = 256,
) -> MapAttribution:
    """Explain one unit image ``(H, W, C)`` with LIME on superpixels.

    Args:
        f: Batch scoring function over unit images.
        image: The image.
        targets: Output columns to explain.
        num_samples: Perturbed images the surrogate is fitted on.
        segments: About how many superpixels (SLIC's ``n_segments``; a scale for the others).
        segmentation: ``slic``, ``quickshift`` or ``felzenszwalb``.
        hide: ``black`` or ``mean`` (each hidden superpixel's mean colour).
        seed: Seeds the perturbations and the segmentation.
        batch_size: Images per model call.
    """
    if segmentation not in SEGMENTATIONS:
        raise InvalidRequest(
            f"segmentation must be one of {list(SEGMENTATIONS)}",
            code="invalid_parameter",
            field="parameters.segmentation",
        )
    channels = image.shape[-1]
    # LIME segments and perturbs RGB images: grey ones go in 2-D (LIME makes them RGB) and come back as one channel.
    picture = image[..., 0] if channels == 1 else image

    def classifier(batch: FloatArray) -> FloatArray:
        batch = np.asarray(batch, dtype=np.float64)
        return np.asarray(f(batch[..., :1] if channels == 1 else batch), dtype=np.float64)

    if segmentation == "slic":
        segmenter = SegmentationAlgorithm("slic", n_segments=segments, compactness=10, start_label=0, random_seed=seed)
    elif segmentation == "quickshift":
        segmenter = SegmentationAlgorithm(
            "quickshift", kernel_size=2, max_dist=max(2, 64 // segments), random_seed=seed
        )
    else:
        segmenter = SegmentationAlgorithm("felzenszwalb", scale=max(1, 400 // segments), min_size=2)
    explainer = LimeImageExplainer(random_state=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explanation = explainer.explain_instance(
                picture,
                classifier,
                labels=tuple(targets),
                top_labels=None,
                hide_color=0.0 if hide == "black" else None,
                num_features=100_000,
                num_samples=num_samples,
                batch_size=batch_size,
                segmentation_fn=segmenter,
                random_seed=seed,
            )
    except OnnxplainError:
        raise
    except Exception as exc:  # lime and scikit-image raise bare errors
        raise ExplanationFailed(f"lime failed: {type(exc).__name__}: {exc}") from exc
    labels = np.asarray(explanation.segments)
    n_segments = int(labels.max()) + 1
    maps, base, local, quality = [], [], [], []
    full = np.asarray(f(image[None]), dtype=np.float64)[0]
    for t in targets:
        weights = np.zeros(n_segments)
        for segment, weight in explanation.local_exp[t]:
            weights[segment] = weight
        sizes = np.bincount(labels.reshape(-1), minlength=n_segments)
        maps.append((weights / np.maximum(sizes, 1))[labels])
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
        info={"segments": n_segments, "segmentation": segmentation, "hide": hide, "num_samples": num_samples},
    )

"""Occlusion: how much the output drops when part of the input is hidden.

Images: a square patch slides over the image with a stride; each position
is replaced by the baseline image there, every occluded copy is scored in
large batches, and each pixel's attribution is the mean output drop over
the patches that cover it (Zeiler & Fergus; Captum's ``Occlusion`` does the
same with torch). Model-agnostic: it needs only ``f``.

Text: leave one word out — a word's attribution is the output drop when
that word alone is cut from the text.

Neither is additive, so no base value is reported. Both are deterministic.
"""

from __future__ import annotations

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.maps import ImageFn, MapAttribution, TextFn, baseline_image, scores_in_batches
from engine.models.text import remove_words, words


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Window starts that cover every pixel (the last window is flush with the edge)."""
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] + patch < size:
        starts.append(size - patch)
    return starts


def occlude_image(
    f: ImageFn,
    image: FloatArray,
    targets: list[int],
    *,
    patch: int | None = None,
    stride: int | None = None,
    baseline: str = "black",
    background: FloatArray | None = None,
    batch_size: int = 256,
) -> MapAttribution:
    """Explain one unit image ``(H, W, C)`` by sliding-patch occlusion.

    Args:
        f: Batch scoring function over unit images.
        image: The image.
        targets: Output columns to explain.
        patch: Side of the square patch in pixels (default: an eighth of the
            shorter side, at least 1).
        stride: Step between patches (default: half the patch, at least 1).
        baseline: What hidden pixels become (``black``, ``blurred``, ``background``).
        background: Background unit images, for ``baseline="background"``.
        batch_size: Occluded images per model call.

    Raises:
        InvalidRequest: ``invalid_parameter`` when the patch does not fit the image.
    """
    h, w, _ = image.shape
    patch = patch or max(1, min(h, w) // 8)
    stride = stride or max(1, patch // 2)
    if patch > min(h, w):
        raise InvalidRequest(
            f"patch {patch} is larger than the image ({h}×{w})", code="invalid_parameter", field="parameters.patch"
        )
    reference = baseline_image(image, baseline, background)
    windows = [(r, c) for r in _starts(h, patch, stride) for c in _starts(w, patch, stride)]
    occluded = np.repeat(image[None], len(windows), axis=0)
    for i, (r, c) in enumerate(windows):
        occluded[i, r : r + patch, c : c + patch] = reference[r : r + patch, c : c + patch]
    full = np.asarray(f(image[None]), dtype=np.float64)[0]
    scores = scores_in_batches(f, occluded, batch_size)
    maps = np.zeros((len(targets), h, w))
    counts = np.zeros((h, w))
    for i, (r, c) in enumerate(windows):
        maps[:, r : r + patch, c : c + patch] += (full[targets] - scores[i, targets])[:, None, None]
        counts[r : r + patch, c : c + patch] += 1
    maps /= counts
    return MapAttribution(
        targets=list(targets),
        maps=maps,
        output_values=full[targets],
        info={"patch": patch, "stride": stride, "baseline": baseline, "evaluations": len(windows) + 1},
    )


def occlude_text(f: TextFn, text: str, targets: list[int], *, batch_size: int = 256) -> MapAttribution:
    """Explain one text by leaving each word out in turn.

    Args:
        f: Batch scoring function over texts.
        text: The text.
        targets: Output columns to explain.
        batch_size: Texts per model call.
    """
    tokens = words(text)
    keep = ~np.eye(len(tokens), dtype=bool)
    variants = [remove_words(text, tokens, row) for row in keep]
    full = np.asarray(f([text]), dtype=np.float64)[0]
    scores = scores_in_batches(f, variants, batch_size)
    maps = (full[targets][:, None] - scores[:, targets].T).reshape(len(targets), len(tokens))
    return MapAttribution(
        targets=list(targets),
        maps=maps,
        output_values=full[targets],
        info={"removal": "leave_one_word_out", "evaluations": len(tokens) + 1},
    )

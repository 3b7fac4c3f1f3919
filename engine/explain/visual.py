"""Answers a person can see: compact maps, PNG heatmaps, highlighted text.

* :func:`encode_map` — an attribution map at input resolution as base64
  little-endian float16 plus its shape (a 224×224 map is 100 kB of JSON, not
  a megabyte of numbers); :func:`decode_map` reverses it.
* :func:`heatmap_png` — the map coloured (matplotlib's colormaps, a diverging
  one for signed maps) and blended over the input, enlarged with nearest
  neighbours so small inputs stay legible; a base64 PNG written by Pillow.
* :func:`highlight_html` — the text with each word in a ``<mark>`` shaded by
  its attribution (red for, blue against, as in the heatmaps). Everything from the input is
  HTML-escaped: the snippet is safe to drop into a page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.models.text import Token

MAP_ENCODING = "float16-base64"


def encode_map(values: FloatArray) -> dict[str, Any]:
    """Encode a map as ``{"encoding": "float16-base64", "shape", "scale", "data", "min", "max"}``.

    The data is ``values / scale`` as row-major little-endian float16 bytes,
    base64-encoded, with ``scale`` the largest absolute value: every entry
    then keeps float16's relative precision (about 1e-3 of the largest),
    even for maps whose values are all tiny (gradients of a saturated
    softmax). A reader multiplies by ``scale``; ``min``/``max`` are exact.
    """
    array = np.asarray(values, dtype=np.float64)
    scale = float(np.abs(array).max()) if array.size else 0.0
    data = (array / (scale or 1.0)).astype("<f2").tobytes()
    return {
        "encoding": MAP_ENCODING,
        "shape": list(array.shape),
        "scale": scale,
        "data": base64.b64encode(data).decode("ascii"),
        "min": float(array.min()) if array.size else 0.0,
        "max": float(array.max()) if array.size else 0.0,
    }


def decode_map(encoded: dict[str, Any]) -> FloatArray:
    """Decode :func:`encode_map` output back to a float64 array."""
    raw = base64.b64decode(encoded["data"])
    unit = np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(encoded["shape"])
    return unit * float(encoded["scale"] or 1.0)


def heatmap_png(image: FloatArray, values: FloatArray, *, signed: bool, min_side: int = 128, alpha: float = 0.5) -> str:
    """Blend a map over its unit image ``(H, W, C)`` and return a base64 PNG.

    Args:
        image: The unit image the map explains (``L`` or ``RGB``).
        values: The ``(H, W)`` map.
        signed: Colour with a diverging map centred on 0 (``bwr``) instead of ``inferno``.
        min_side: Enlarge (nearest neighbour) until the shorter side is at least this.
        alpha: Weight of the heatmap in the blend.
    """
    from matplotlib import colormaps
    from PIL import Image

    v = np.asarray(values, dtype=np.float64)
    if signed:
        top = float(np.abs(v).max()) or 1.0
        normed = (v / top + 1.0) / 2.0
        cmap = colormaps["bwr"]
    else:
        low, high = float(v.min()), float(v.max())
        normed = (v - low) / (high - low) if high > low else np.zeros_like(v)
        cmap = colormaps["inferno"]
    colours = np.asarray(cmap(normed))[..., :3]
    base = np.asarray(image, dtype=np.float64)
    if base.shape[-1] == 1:
        base = np.repeat(base, 3, axis=-1)
    blended = (1 - alpha) * base + alpha * colours
    pixels = np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8)
    factor = max(1, -(-min_side // max(1, min(pixels.shape[:2]))))
    picture = Image.fromarray(pixels, mode="RGB")
    if factor > 1:
        picture = picture.resize((pixels.shape[1] * factor, pixels.shape[0] * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def highlight_html(text: str, tokens: Sequence[Token], values: Sequence[float]) -> str:
    """Return the text as an HTML snippet with each word shaded by its attribution.

    Positive attributions are red, negative blue (as in the heatmaps' ``bwr`` colormap), opacity proportional to
    ``|value| / max |value|``; each ``<mark>`` carries the value in ``title``
    and ``data-attribution``. All text is escaped.
    """
    top = max((abs(float(v)) for v in values), default=0.0) or 1.0
    parts = ['<span class="onnxplain-text">']
    position = 0
    for token, value in zip(tokens, values, strict=True):
        parts.append(html.escape(text[position : token.start]))
        strength = abs(float(value)) / top
        colour = "178, 24, 43" if value >= 0 else "33, 102, 172"
        parts.append(
            f'<mark style="background-color: rgba({colour}, {strength:.3f})" '
            f'title="{float(value):.4g}" data-attribution="{float(value):.6g}">{html.escape(token.text)}</mark>'
        )
        position = token.end
    parts.append(html.escape(text[position:]))
    parts.append("</span>")
    return "".join(parts)

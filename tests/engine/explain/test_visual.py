"""Compact maps, PNG heatmaps and escaped text highlights."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from engine.explain.visual import decode_map, encode_map, heatmap_png, highlight_html
from engine.models.text import words


def test_maps_round_trip_at_float16_precision_even_when_tiny():
    values = np.random.default_rng(0).normal(size=(6, 5)) * 1e-7
    encoded = encode_map(values)
    assert encoded["shape"] == [6, 5] and encoded["encoding"] == "float16-base64"
    assert len(base64.b64decode(encoded["data"])) == 6 * 5 * 2
    np.testing.assert_allclose(decode_map(encoded), values, atol=1e-3 * np.abs(values).max())
    assert decode_map(encode_map(np.zeros((2, 2)))).tolist() == [[0, 0], [0, 0]]


@pytest.mark.parametrize("signed", [True, False])
def test_heatmap_is_an_enlarged_png_over_the_image(signed):
    image = np.zeros((8, 8, 1))
    values = np.zeros((8, 8))
    values[2, 3] = 1.0
    png = Image.open(io.BytesIO(base64.b64decode(heatmap_png(image, values, signed=signed))))
    assert png.format == "PNG" and png.size == (128, 128) and png.mode == "RGB"
    pixels = np.asarray(png)
    hot, cold = pixels[2 * 16 + 8, 3 * 16 + 8], pixels[100, 100]
    assert not np.array_equal(hot, cold)


def test_highlight_html_escapes_the_text_and_marks_every_word():
    text = 'a <script>alert("x")</script> & great'
    tokens = words(text)
    snippet = highlight_html(text, tokens, [0.1 * i - 0.2 for i in range(len(tokens))])
    assert "<script" not in snippet and "&lt;<mark" in snippet and "&amp;" in snippet and "&quot;" in snippet
    assert snippet.count("<mark") == len(tokens) == 6
    assert re.search(r"rgba\(33, 102, 172, 0\.667\)[^>]*>a</mark>", snippet)
    assert re.search(r"rgba\(178, 24, 43, 1\.000\)[^>]*>great</mark>", snippet)

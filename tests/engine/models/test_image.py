"""Image inputs: card specs, decoding PNG/JPEG/arrays into unit images, and the model tensor."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from engine.errors import InvalidRequest, UnknownField
from engine.models.image import ImageSpec, encode_png, parse_images


def png(width: int, height: int, mode: str = "RGB", colour: object = (10, 200, 30), fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_spec_from_card_round_trips_and_fills_defaults():
    spec = ImageSpec.from_dict({"height": 4, "width": 6, "channels": "BGR", "mean": [1, 2, 3], "std": [2, 2, 2]})
    assert spec.shape == (4, 6, 3) and spec.model_shape == (3, 4, 6)
    assert ImageSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("card", "field"),
    [
        ({"width": 4}, "card.image.height"),
        ({"height": 4, "width": 4, "layout": "CHWN"}, "card.image.layout"),
        ({"height": 4, "width": 4, "channels": "RGBA"}, "card.image.channels"),
        ({"height": 4, "width": 4, "channels": "RGB", "mean": [0.5]}, "card.image.mean"),
        ({"height": 4, "width": 4, "channels": "L", "std": [0]}, "card.image.std"),
        ({"height": 4, "width": 4, "scale": "percent"}, "card.image.scale"),
        ({"height": 4000, "width": 4000, "max_pixels": 100}, "card.image.max_pixels"),
    ],
)
def test_bad_specs_name_their_field(card, field):
    with pytest.raises(InvalidRequest) as caught:
        ImageSpec.from_dict(card)
    assert caught.value.code == "invalid_card" and caught.value.field == field


def test_unknown_spec_field_is_refused():
    with pytest.raises(UnknownField):
        ImageSpec.from_dict({"height": 4, "width": 4, "colour": "yes"})


def test_png_and_jpeg_decode_to_unit_images_and_resize():
    spec = ImageSpec(height=4, width=5, channels="RGB")
    image = spec.decode(png(5, 4), "instances[0]")
    assert image.shape == (4, 5, 3)
    np.testing.assert_allclose(image[0, 0], np.array([10, 200, 30]) / 255)
    resized = spec.decode(png(50, 40, fmt="JPEG"), "instances[0]")
    assert resized.shape == (4, 5, 3) and 0 <= resized.min() and resized.max() <= 1
    grey = ImageSpec(height=4, width=5, channels="L").decode("data:image/png;base64," + png(5, 4), "x")
    assert grey.shape == (4, 5, 1)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("not base64!!", "invalid_image"),
        (base64.b64encode(b"plain bytes, no image").decode(), "invalid_image"),
        (42, "invalid_image"),
        ([[0.1, 0.2], [0.3]], "invalid_image"),
        ([[2.0] * 5] * 4, "invalid_image"),
        ([[0.5] * 4] * 4, "wrong_image_size"),
    ],
)
def test_bad_images_get_codes(value, code):
    spec = ImageSpec(height=4, width=5, channels="L")
    with pytest.raises(InvalidRequest) as caught:
        spec.decode(value, "instances[2]")
    assert caught.value.code == code and caught.value.field == "instances[2]"


def test_wrong_size_is_refused_when_resizing_is_off():
    spec = ImageSpec(height=4, width=5, resize=False)
    with pytest.raises(InvalidRequest) as caught:
        spec.decode(png(6, 4), "instances[0]")
    assert caught.value.code == "wrong_image_size"


def test_too_many_pixels_is_refused_before_decoding():
    """A small PNG whose header declares many pixels (a decompression bomb) is refused from its header."""
    spec = ImageSpec(height=4, width=4, max_pixels=10_000)
    bomb = png(2000, 2000, mode="L", colour=0)  # 4 Mpx of zeros compress to a few kB
    assert len(bomb) < 20_000
    with pytest.raises(InvalidRequest) as caught:
        spec.decode(bomb, "instances[0]")
    assert caught.value.code == "image_too_large"


def test_too_many_bytes_is_refused_before_base64_decoding():
    spec = ImageSpec(height=4, width=4, max_bytes=100)
    with pytest.raises(InvalidRequest) as caught:
        spec.decode("A" * 1000, "instances[0]")
    assert caught.value.code == "image_too_large"


def test_arrays_in_card_layout_and_scale_become_unit_images():
    pixels = np.arange(2 * 3 * 3, dtype=float).reshape(3, 2, 3) * 10  # C, H, W in 0-255
    spec = ImageSpec(height=2, width=3, channels="BGR", layout="NCHW", scale="byte")
    unit = spec.decode(pixels.tolist(), "x")
    assert unit.shape == (2, 3, 3)
    # BGR arrays come back in display (RGB) order: channel 0 of the unit image is the array's channel 2.
    np.testing.assert_allclose(unit[..., 0], pixels[2] / 255)
    np.testing.assert_allclose(spec.to_model(unit[None])[0], pixels, rtol=1e-6)


def test_to_model_applies_scale_mean_std_and_layout():
    spec = ImageSpec(height=1, width=2, channels="RGB", layout="NHWC", scale="byte", mean=[10, 20, 30], std=[2, 4, 5])
    unit = np.array([[[[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]]]])
    out = spec.to_model(unit)
    assert out.dtype == np.float32 and out.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(out[0, 0, 0], [(255 - 10) / 2, (127.5 - 20) / 4, (0 - 30) / 5], rtol=1e-6)


def test_parse_images_checks_the_list_and_names_the_index():
    spec = ImageSpec(height=2, width=2, channels="L")
    good = encode_png(np.full((2, 2, 1), 0.5))
    assert parse_images([good, good], spec, max_rows=4).shape == (2, 2, 2, 1)
    with pytest.raises(InvalidRequest) as caught:
        parse_images([good, "nope"], spec, max_rows=4)
    assert caught.value.field == "instances[1]"
    for value, code in (([], "empty_input"), ({}, "invalid_instances"), ([good] * 5, "too_many_rows")):
        with pytest.raises(InvalidRequest) as caught:
            parse_images(value, spec, max_rows=4)
        assert caught.value.code == code


def test_packed_images_round_trip_exactly():
    from engine.models.image import pack_images, unpack_images

    rng = np.random.default_rng(0)
    decoded = rng.integers(0, 256, (2, 5, 4, 3)) / 255.0
    packed = pack_images(decoded)
    assert packed["encoding"] == "uint8"
    np.testing.assert_array_equal(unpack_images(packed), decoded)
    floats = rng.uniform(0, 1, (1, 3, 2, 1))
    packed = pack_images(floats)
    assert packed["encoding"] == "float32"
    np.testing.assert_allclose(unpack_images(packed), floats, rtol=1e-7)

"""Image inputs: what a card says about its image tensor, and requests decoded into it.

Every image method works on *unit images*: float64 arrays ``(n, H, W, C)``
with values in [0, 1] and channels in display order (``L`` or ``RGB``).
:meth:`ImageSpec.to_model` turns a batch of them into the tensor the ONNX
graph takes (layout, 0-255 scaling, per-channel mean/std, BGR order), so
methods never know how a model wants its pixels, and maps come out at the
input's resolution.

Requests send an image as a base64 PNG or JPEG (resized to the card's size
when the card allows it) or as nested arrays in the card's layout and scale.
Decoding is guarded: the compressed size is capped before base64 is decoded,
and the pixel count is read from the header and capped before any pixel is
decompressed (Pillow's own ``MAX_IMAGE_PIXELS`` is lowered to the hard cap
as a second fence).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.models.fields import card_int, card_object

LAYOUTS = ("NCHW", "NHWC")
CHANNEL_ORDERS = ("L", "RGB", "BGR")
SCALES = ("unit", "byte")
HARD_MAX_PIXELS = 64 * 1024 * 1024
"""No card may allow more pixels than this per image (about 8192 × 8192)."""
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
FORMATS = ("PNG", "JPEG")

# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; our own cap comes first,
# this keeps Pillow from ever decompressing a bomb even if a caller skipped the check.
if Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS > HARD_MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = HARD_MAX_PIXELS

_FIELDS = {"layout", "height", "width", "channels", "scale", "mean", "std", "resize", "max_pixels", "max_bytes"}


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """How a model takes its one image tensor.

    Attributes:
        height: Rows of the model's image.
        width: Columns of the model's image.
        channels: ``L`` (one channel), ``RGB`` or ``BGR`` (the model's channel order).
        layout: ``NCHW`` or ``NHWC``.
        scale: ``unit`` (pixels in [0, 1]) or ``byte`` (0-255) before normalisation.
        mean: Per-channel value subtracted after scaling, in the scale's units.
        std: Per-channel divisor applied after the mean.
        resize: Resize decoded images to ``height × width``; when false a
            differently sized image is refused.
        max_pixels: Most pixels (width × height) an uploaded image may have.
        max_bytes: Most bytes of one encoded (PNG/JPEG) image.
    """

    height: int
    width: int
    channels: str = "RGB"
    layout: str = "NCHW"
    scale: str = "unit"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def n_channels(self) -> int:
        """Number of channels (1 for ``L``, else 3)."""
        return 1 if self.channels == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one unit image, ``(H, W, C)``."""
        return (self.height, self.width, self.n_channels)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Shape of one image in the model's layout (without the batch axis)."""
        h, w, c = self.shape
        return (c, h, w) if self.layout == "NCHW" else (h, w, c)

    @property
    def scale_factor(self) -> float:
        """What a unit pixel is multiplied by before normalisation."""
        return 255.0 if self.scale == "byte" else 1.0

    @property
    def channel_mean(self) -> FloatArray:
        """Per-channel mean, in the model's channel order (zeros when the card gives none)."""
        return np.asarray(self.mean or (0.0,) * self.n_channels, dtype=np.float64)

    @property
    def channel_std(self) -> FloatArray:
        """Per-channel std, in the model's channel order (ones when the card gives none)."""
        return np.asarray(self.std or (1.0,) * self.n_channels, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as card JSON."""
        return {
            "layout": self.layout,
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "max_pixels": self.max_pixels,
            "max_bytes": self.max_bytes,
        }

    @classmethod
    def from_dict(cls, data: object, where: str = "card.image") -> ImageSpec:
        """Parse and validate the ``image`` object of a card.

        Raises:
            InvalidRequest: ``invalid_card`` naming the field at fault.
            UnknownField: A field this version does not know.
        """
        data = card_object(data, _FIELDS, where)
        height = card_int(data.get("height"), f"{where}.height", 16384)
        width = card_int(data.get("width"), f"{where}.width", 16384)
        channels = _choice(data.get("channels", "RGB"), CHANNEL_ORDERS, f"{where}.channels")
        layout = _choice(data.get("layout", "NCHW"), LAYOUTS, f"{where}.layout")
        scale = _choice(data.get("scale", "unit"), SCALES, f"{where}.scale")
        n = 1 if channels == "L" else 3
        mean = _floats(data.get("mean", []), n, f"{where}.mean", positive=False)
        std = _floats(data.get("std", []), n, f"{where}.std", positive=True)
        resize = data.get("resize", True)
        if not isinstance(resize, bool):
            raise InvalidRequest("resize must be true or false", code="invalid_card", field=f"{where}.resize")
        max_pixels = card_int(data.get("max_pixels", DEFAULT_MAX_PIXELS), f"{where}.max_pixels", HARD_MAX_PIXELS)
        max_bytes = card_int(data.get("max_bytes", DEFAULT_MAX_BYTES), f"{where}.max_bytes", 64 * 1024 * 1024)
        if height * width > max_pixels:
            raise InvalidRequest(
                f"the model's image ({height}×{width}) has more pixels than max_pixels ({max_pixels})",
                code="invalid_card",
                field=f"{where}.max_pixels",
            )
        return cls(height, width, channels, layout, scale, mean, std, resize, max_pixels, max_bytes)

    def to_model(self, images: FloatArray) -> npt.NDArray[np.float32]:
        """Turn unit images ``(n, H, W, C)`` into the model's input tensor (float32).

        Args:
            images: Unit images in display channel order.

        Returns:
            The batch in the model's layout, scale, normalisation and channel order.
        """
        x = np.asarray(images, dtype=np.float64) * self.scale_factor
        if self.channels == "BGR":
            x = x[..., ::-1]
        x = (x - self.channel_mean) / self.channel_std
        if self.layout == "NCHW":
            x = np.transpose(x, (0, 3, 1, 2))
        return np.ascontiguousarray(x, dtype=np.float32)

    def decode(self, value: object, field: str) -> FloatArray:
        """Decode one request image into a unit image ``(H, W, C)``.

        Args:
            value: A base64 PNG/JPEG string (a ``data:`` URL prefix is
                allowed), or nested arrays in the card's layout and scale
                (``H × W`` also for one channel), before mean/std.
            field: JSON path of the value, for errors.

        Raises:
            InvalidRequest: ``invalid_image``, ``image_too_large`` or
                ``wrong_image_size``, naming ``field``.
        """
        if isinstance(value, str):
            return self._decode_encoded(value, field)
        if isinstance(value, list):
            return self._decode_array(value, field)
        raise InvalidRequest(
            "an image is a base64 PNG/JPEG string or nested arrays of pixels", code="invalid_image", field=field
        )

    def _decode_encoded(self, value: str, field: str) -> FloatArray:
        if value.startswith("data:"):
            _, _, value = value.partition(",")
        # base64 is 4/3 of the bytes: refuse oversized images before decoding anything.
        if len(value) > math.ceil(self.max_bytes * 4 / 3) + 4:
            raise InvalidRequest(
                f"the encoded image is over {self.max_bytes} bytes", code="image_too_large", field=field
            )
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(f"the image is not valid base64: {exc}", code="invalid_image", field=field) from exc
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(raw), formats=FORMATS)
                width, height = image.size
                # The header is read; nothing is decompressed until load(), so the cap comes first.
                if width * height > self.max_pixels:
                    raise InvalidRequest(
                        f"the image has {width}×{height} pixels, more than the limit of {self.max_pixels}",
                        code="image_too_large",
                        field=field,
                    )
                image.load()
        except InvalidRequest:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidRequest(f"the image is too large: {exc}", code="image_too_large", field=field) from exc
        except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError)
            raise InvalidRequest(
                f"the image is not a readable PNG or JPEG: {exc}", code="invalid_image", field=field
            ) from exc
        picture: Image.Image = image.convert("L" if self.channels == "L" else "RGB")
        if picture.size != (self.width, self.height):
            if not self.resize:
                raise InvalidRequest(
                    f"the image is {picture.size[0]}×{picture.size[1]} (width×height); the model takes "
                    f"{self.width}×{self.height} and does not resize",
                    code="wrong_image_size",
                    field=field,
                )
            picture = picture.resize((self.width, self.height), Image.Resampling.BILINEAR)
        pixels = np.asarray(picture, dtype=np.float64) / 255.0
        return pixels.reshape(self.shape)

    def _decode_array(self, value: list[Any], field: str) -> FloatArray:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(
                "the image arrays are ragged or hold non-numbers", code="invalid_image", field=field
            ) from exc
        h, w, c = self.shape
        if array.ndim == 2 and c == 1:
            array = array[:, :, None] if self.layout == "NHWC" else array[None, :, :]
        expected = self.model_shape
        if array.shape != expected:
            raise InvalidRequest(
                f"the image array has shape {list(array.shape)}; the model takes {list(expected)} ({self.layout} "
                "without the batch axis)",
                code="wrong_image_size",
                field=field,
            )
        if not np.all(np.isfinite(array)):
            raise InvalidRequest("the image holds a non-finite value", code="invalid_image", field=field)
        top = self.scale_factor
        if array.min() < 0 or array.max() > top:
            raise InvalidRequest(
                f"pixel values must lie in [0, {top:g}] (scale {self.scale!r})", code="invalid_image", field=field
            )
        if self.layout == "NCHW":
            array = np.transpose(array, (1, 2, 0))
        if self.channels == "BGR":
            array = array[..., ::-1]
        return np.ascontiguousarray(array / top)


def parse_images(instances: object, spec: ImageSpec, *, max_rows: int, where: str = "instances") -> FloatArray:
    """Validate request images and return them as unit images ``(n, H, W, C)``.

    Raises:
        InvalidRequest: ``invalid_instances``, ``empty_input``,
            ``too_many_rows`` or an image's own code, naming its index.
    """
    if not isinstance(instances, list):
        raise InvalidRequest(f"{where} must be a list of images", code="invalid_instances", field=where)
    if not instances:
        raise InvalidRequest(f"{where} is empty: send at least one image", code="empty_input", field=where)
    if len(instances) > max_rows:
        raise InvalidRequest(
            f"{len(instances)} images is more than the limit of {max_rows}", code="too_many_rows", field=where
        )
    return np.stack([spec.decode(item, f"{where}[{i}]") for i, item in enumerate(instances)])


def pack_images(images: FloatArray) -> dict[str, Any]:
    """Pack unit images ``(n, H, W, C)`` compactly for a job payload (JSON, base64).

    Images decoded from PNG/JPEG (or sent as 0-255 integers) are exact multiples of 1/255 and travel as
    ``uint8`` bytes, losslessly and at a byte per value (a 224×224 RGB image is 200 KB of base64, not the
    3 MB of a float list); any other image travels as ``float32``, the precision the model is fed at.
    """
    array = np.ascontiguousarray(images, dtype=np.float64)
    scaled = array * 255.0
    as_bytes = np.rint(scaled)
    if np.array_equal(as_bytes / 255.0, array):
        dtype, raw = "uint8", as_bytes.astype(np.uint8).tobytes()
    else:
        dtype, raw = "float32", array.astype("<f4").tobytes()
    return {"encoding": dtype, "shape": list(array.shape), "data": base64.b64encode(raw).decode("ascii")}


def unpack_images(packed: dict[str, Any]) -> FloatArray:
    """Unit images back from :func:`pack_images` output, float64 ``(n, H, W, C)``."""
    raw = base64.b64decode(packed["data"])
    shape = tuple(int(n) for n in packed["shape"])
    if packed["encoding"] == "uint8":
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape).astype(np.float64) / 255.0
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float64)


def encode_png(image: FloatArray) -> str:
    """Encode a unit image ``(H, W, C)`` as a base64 PNG (for examples, demos and tests)."""
    pixels = np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _choice(value: object, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise InvalidRequest(f"must be one of {list(choices)}", code="invalid_card", field=field)
    return str(value)


def _floats(value: object, n: int, field: str, *, positive: bool) -> tuple[float, ...]:
    if value == []:
        return ()
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or (positive and not all(v > 0 for v in value))
    ):
        kind = "positive " if positive else ""
        raise InvalidRequest(
            f"must be a list of {n} finite {kind}numbers (one per channel)", code="invalid_card", field=field
        )
    return tuple(float(v) for v in value)

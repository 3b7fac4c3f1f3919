"""The model card: what a model is, in the terms a person knows.

A card names the task, the input kind (``tabular`` rows of features,
``image`` tensors, ``text`` strings), the features (numeric, or categorical
with their allowed values) of a tabular model or the image/text spec of the
others, the class names and which ONNX output holds the probabilities or
the regression value. It is validated strictly: unknown
fields are errors, never silently ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from engine.errors import InvalidRequest, UnknownField
from engine.models.constraints import Constraints
from engine.models.image import ImageSpec
from engine.models.text import TextSpec

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TASKS = ("classification", "regression")
INPUT_KINDS = ("tabular", "image", "text")
FEATURE_TYPES = ("numeric", "categorical")
QUANTIZED_KINDS = ("int8_dynamic", "int8_static", "fp16")
PRUNED_KINDS = ("prune_magnitude", "prune_structured", "prune_structured+int8_static")
VARIANT_KINDS = QUANTIZED_KINDS + PRUNED_KINDS


@dataclass(frozen=True, slots=True)
class Feature:
    """One raw model feature.

    Attributes:
        name: Feature name, unique within the card.
        type: ``numeric`` or ``categorical``.
        categories: Allowed values of a categorical feature, in code order.
        encoding: How a categorical feature enters a single-tensor model:
            ``ordinal`` (one column holding the category's index) or
            ``one_hot`` (one column per category, in order). Models with one
            string input per feature take the category name itself.
    """

    name: str
    type: str = "numeric"
    categories: tuple[str, ...] = ()
    encoding: str = "ordinal"

    @property
    def width(self) -> int:
        """Columns this feature occupies in a single input tensor."""
        return len(self.categories) if self.encoding == "one_hot" else 1

    def to_dict(self) -> dict[str, Any]:
        """Return the feature as JSON."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "categorical":
            out["categories"] = list(self.categories)
            out["encoding"] = self.encoding
        return out


@dataclass(frozen=True, slots=True)
class ModelCard:
    """What a model is and how to read its outputs.

    Attributes:
        name: Model name (``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most 64 chars).
        task: ``classification`` or ``regression``.
        features: The raw features in model order.
        class_names: Class names in output-column order (classification).
        output: Name of the ONNX output holding probabilities (or scores) for
            classification, or the value for regression; ``None`` picks it.
        input_kind: ``tabular``, ``image`` or ``text``.
        description: Free text.
        variants: Variant kinds to build at registration.
        image: How an image model takes its tensor (``input_kind == "image"``).
        text: How a text model takes its strings (``input_kind == "text"``).
        constraints: What counterfactuals may change (tabular models; optional).
    """

    name: str
    task: str
    features: tuple[Feature, ...]
    class_names: tuple[str, ...] = ()
    output: str | None = None
    input_kind: str = "tabular"
    description: str = ""
    variants: tuple[str, ...] = field(default=())
    image: ImageSpec | None = None
    text: TextSpec | None = None
    constraints: Constraints = field(default_factory=Constraints)

    @property
    def background_columns(self) -> list[str]:
        """Columns of the background table: the features, or an image's pixels ``p0 …`` (row-major H, W, C)."""
        if self.image is not None:
            h, w, c = self.image.shape
            return [f"p{i}" for i in range(h * w * c)]
        return self.feature_names

    @property
    def feature_names(self) -> list[str]:
        """Names of the features in model order."""
        return [f.name for f in self.features]

    @property
    def output_names(self) -> list[str]:
        """Names of the explained outputs: the classes, or ``["value"]``."""
        return list(self.class_names) if self.task == "classification" else ["value"]

    @property
    def categorical(self) -> tuple[int, ...]:
        """Column indices of the categorical features."""
        return tuple(i for i, f in enumerate(self.features) if f.type == "categorical")

    def to_dict(self) -> dict[str, Any]:
        """Return the card as JSON."""
        out: dict[str, Any] = {
            "name": self.name,
            "task": self.task,
            "input_kind": self.input_kind,
            "output": self.output,
            "description": self.description,
            "variants": list(self.variants),
        }
        if self.input_kind == "tabular":
            out["features"] = [f.to_dict() for f in self.features]
        if self.image is not None:
            out["image"] = self.image.to_dict()
        if self.text is not None:
            out["text"] = self.text.to_dict()
        if self.task == "classification":
            out["class_names"] = list(self.class_names)
        if self.constraints:
            out["constraints"] = self.constraints.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: object, *, name: str | None = None) -> ModelCard:
        """Parse and validate a card.

        Args:
            data: The decoded card JSON.
            name: The model name to use when the card does not give one.

        Returns:
            The validated card.

        Raises:
            InvalidRequest: A field is missing, of the wrong type or invalid.
            UnknownField: The card has a field this version does not know.
        """
        obj = _object(data, "card")
        _reject_unknown(obj, _CARD_FIELDS, "card")
        card_name = obj.get("name", name)
        if not isinstance(card_name, str) or not NAME_PATTERN.match(card_name):
            raise InvalidRequest(
                "name must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}", code="invalid_name", field="card.name"
            )
        task = obj.get("task")
        if task not in TASKS:
            raise InvalidRequest(f"task must be one of {list(TASKS)}", code="invalid_card", field="card.task")
        input_kind = obj.get("input_kind", "tabular")
        if input_kind not in INPUT_KINDS:
            raise InvalidRequest(
                f"input_kind must be one of {list(INPUT_KINDS)}", code="invalid_card", field="card.input_kind"
            )
        image: ImageSpec | None = None
        text: TextSpec | None = None
        if input_kind == "tabular":
            for other in ("image", "text"):
                if other in obj:
                    raise InvalidRequest(f"a tabular card has no {other!r}", code="invalid_card", field=f"card.{other}")
            features = _features(obj.get("features"))
        else:
            if "constraints" in obj:
                raise InvalidRequest(
                    "only tabular cards have constraints", code="invalid_card", field="card.constraints"
                )
            if "features" in obj:
                raise InvalidRequest(
                    f"an {input_kind} card has no features; describe the input in card.{input_kind}",
                    code="invalid_card",
                    field="card.features",
                )
            other = "text" if input_kind == "image" else "image"
            if other in obj:
                raise InvalidRequest(
                    f"an {input_kind} card has no {other!r}", code="invalid_card", field=f"card.{other}"
                )
            features = ()
            if input_kind == "image":
                if "image" not in obj:
                    raise InvalidRequest(
                        "an image card needs an 'image' object", code="invalid_card", field="card.image"
                    )
                image = ImageSpec.from_dict(obj["image"])
            else:
                text = TextSpec.from_dict(obj.get("text", {}))
        class_names = _strings(obj.get("class_names", []), "card.class_names")
        if task == "classification" and len(class_names) < 2:
            raise InvalidRequest(
                "a classifier needs at least two class_names", code="invalid_card", field="card.class_names"
            )
        if task == "regression" and class_names:
            raise InvalidRequest("a regressor has no class_names", code="invalid_card", field="card.class_names")
        if len(set(class_names)) != len(class_names):
            raise InvalidRequest("class_names repeat", code="invalid_card", field="card.class_names")
        output = obj.get("output")
        if output is not None and not isinstance(output, str):
            raise InvalidRequest("output must be a string", code="invalid_card", field="card.output")
        description = obj.get("description", "")
        if not isinstance(description, str):
            raise InvalidRequest("description must be a string", code="invalid_card", field="card.description")
        variants = _strings(obj.get("variants", []), "card.variants")
        for i, kind in enumerate(variants):
            if kind not in VARIANT_KINDS:
                raise InvalidRequest(
                    f"variant kinds are {list(VARIANT_KINDS)}", code="invalid_card", field=f"card.variants[{i}]"
                )
        return cls(
            name=card_name,
            task=task,
            features=features,
            class_names=tuple(class_names),
            output=output,
            input_kind=input_kind,
            description=description,
            variants=tuple(variants),
            image=image,
            text=text,
            constraints=Constraints.parse(
                obj.get("constraints"), features, where="card.constraints", code="invalid_card"
            ),
        )


_CARD_FIELDS = {
    "name",
    "task",
    "input_kind",
    "features",
    "class_names",
    "output",
    "description",
    "variants",
    "image",
    "text",
    "constraints",
}
_FEATURE_FIELDS = {"name", "type", "categories", "encoding"}
ENCODINGS = ("ordinal", "one_hot")


def _object(data: object, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where} must be a JSON object", code="invalid_card", field=where)
    return data


def _reject_unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    for key in obj:
        if key not in known:
            raise UnknownField(f"unknown field {key!r} in {where}", field=f"{where}.{key}")


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidRequest(f"{where} must be a list of non-empty strings", code="invalid_card", field=where)
    return list(value)


def _features(value: object) -> tuple[Feature, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            "features must be a non-empty list of names or objects",
            code="invalid_card",
            field="card.features",
        )
    out: list[Feature] = []
    for i, item in enumerate(value):
        where = f"card.features[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        obj = _object(item, where)
        _reject_unknown(obj, _FEATURE_FIELDS, where)
        fname, ftype = obj.get("name"), obj.get("type", "numeric")
        if not isinstance(fname, str) or not fname:
            raise InvalidRequest("feature name must be a non-empty string", code="invalid_card", field=where)
        if ftype not in FEATURE_TYPES:
            raise InvalidRequest(
                f"feature type must be one of {list(FEATURE_TYPES)}",
                code="invalid_card",
                field=where + ".type",
            )
        categories: list[str] = []
        if ftype == "categorical":
            categories = _strings(obj.get("categories"), where + ".categories")
            if not categories or len(set(categories)) != len(categories):
                raise InvalidRequest(
                    "categories must be distinct and non-empty",
                    code="invalid_card",
                    field=where + ".categories",
                )
        elif "categories" in obj or "encoding" in obj:
            raise InvalidRequest(
                "only categorical features have categories and an encoding", code="invalid_card", field=where
            )
        encoding = obj.get("encoding", "ordinal")
        if encoding not in ENCODINGS:
            raise InvalidRequest(
                f"encoding must be one of {list(ENCODINGS)}", code="invalid_card", field=where + ".encoding"
            )
        out.append(Feature(fname, ftype, tuple(categories), encoding))
    if len({f.name for f in out}) != len(out):
        raise InvalidRequest("feature names repeat", code="invalid_card", field="card.features")
    return tuple(out)

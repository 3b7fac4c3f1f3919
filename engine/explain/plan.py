"""What to explain, validated before anything runs: the plan (model, variant, method, parameters, targets).

The API calls :func:`build_request` (validation only: no shap, no model evaluation) and enqueues the request's
payload; an audit makes one :class:`ExplainPlan` with :func:`plan_explanation` and pairs it with each chunk's
rows. Method facts (parameters, caps, cost, background) come from the method table, :data:`engine.methods.METHODS`.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InvalidRequest
from engine.methods import EXACT_MAX_FEATURES, METHODS, choose_auto, evaluations_per_row, validate_params
from engine.models.rows import parse_inputs
from engine.models.store import ModelVersion
from engine.settings import Settings


@dataclass(frozen=True)
class ExplainPlan:
    """What to explain, apart from the rows: plain JSON, as stored in a job payload or an audit spec."""

    model: str
    version: int
    sha256: str
    variant: str
    method: str
    method_reason: str | None
    parameters: dict[str, Any]
    targets: list[str] | None

    def to_dict(self) -> dict[str, Any]:
        """Return the plan as a JSON-ready dict (its parameters and targets copied, their values shared)."""
        # Not dataclasses.asdict: its deep copy of every value was half of a sync explain's to_payload.
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        plain["parameters"] = dict(self.parameters)
        plain["targets"] = None if self.targets is None else list(self.targets)
        return plain

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExplainPlan:
        """Rebuild a plan from :meth:`to_dict` output."""
        return cls(**data)


@dataclass(frozen=True)
class ExplainRequest:
    """A plan and the rows it explains (raw feature space), as carried in a job payload."""

    plan: ExplainPlan
    rows: list[Any] | dict[str, Any]
    """Raw-feature rows or texts (lists), or unit images packed by :func:`engine.models.image.pack_images`."""

    def to_payload(self) -> dict[str, Any]:
        """Return the request as a JSON-ready dict (the plan's fields and ``rows``)."""
        return {**self.plan.to_dict(), "rows": self.rows}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ExplainRequest:
        """Rebuild a request from :meth:`to_payload` output."""
        fields = dict(payload)
        rows = fields.pop("rows")
        return cls(ExplainPlan.from_dict(fields), rows)


def build_request(body: dict[str, Any], model: ModelVersion, settings: Settings, variant: str) -> ExplainRequest:
    """Validate an explain request body (rows and plan) against the model (no model evaluation).

    Raises:
        InvalidRequest: Bad rows, method, parameters or targets; or no
            background data for a method that needs it.
    """
    X = parse_inputs(body.get("instances"), model.card, max_rows=settings.max_explain_rows)
    width = None
    rows: list[Any] | dict[str, Any]
    if model.card.input_kind == "text":
        from engine.models.text import words

        width = max(len(words(str(t))) for t in X)
    if model.card.image is not None:
        from engine.models.image import pack_images

        pixels = len(X) * model.card.image.height * model.card.image.width
        if pixels > settings.max_explain_pixels:
            raise InvalidRequest(
                f"{len(X)} images of {model.card.image.height}×{model.card.image.width} are {pixels:,} pixels, over "
                f"the limit of {settings.max_explain_pixels:,} per explain request; send fewer or submit an audit",
                code="too_many_rows",
                field="instances",
            )
        rows = pack_images(np.asarray(X))
    else:
        rows = X if isinstance(X, list) else X.tolist()
    return ExplainRequest(plan_explanation(body, model, settings, variant, rows=len(X), width=width), rows)


def plan_explanation(
    body: dict[str, Any], model: ModelVersion, settings: Settings, variant: str, *, rows: int, width: int | None = None
) -> ExplainPlan:
    """Validate what to explain (``method``, ``parameters``, ``targets`` of ``body``) for ``rows`` rows.

    ``width`` is the most words of the texts to explain (text models), for the cost.

    Raises:
        InvalidRequest: Bad method, parameters or targets; a method that does not apply to the model; no
            background data for a method that needs it; too many features; too expensive for ``rows`` rows.
    """
    method = body.get("method", "auto")
    if not isinstance(method, str) or (method != "auto" and method not in METHODS):
        raise InvalidRequest(
            f"method must be 'auto' or one of {sorted(METHODS)}", code="unknown_method", field="method"
        )
    kind = model.card.input_kind
    reason = None
    if method == "auto":
        method, reason = _choose(model) if kind == "tabular" else _choose_perception(model)
    entry = METHODS[method]
    raw_params = body.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise InvalidRequest("parameters must be an object", code="invalid_parameter", field="parameters")
    params = validate_params(method, raw_params, kind)
    if model.card.input_kind not in entry.input_kinds:
        raise InvalidRequest(
            f"{method} explains {', '.join(entry.input_kinds)} models, not {model.card.input_kind}",
            code="method_not_applicable",
            field="method",
        )
    if model.card.task not in entry.tasks:
        raise InvalidRequest(
            f"{method} explains {' and '.join(entry.tasks)} models, not {model.card.task}",
            code="method_not_applicable",
            field="method",
        )
    # Image and text methods remove information towards a baseline, not background rows, unless asked to.
    wants_background = (entry.needs_background and kind == "tabular") or params.get("baseline") == "background"
    if wants_background and model.background_rows == 0:
        raise InvalidRequest(
            f"model {model.name!r} v{model.version} has no background data, which {method} needs; "
            "register it with a 'background' part",
            code="background_required",
            field="method",
        )
    if entry.gradients:
        verdict = gradient_verdict(model)
        if verdict is not None:
            raise InvalidRequest(
                f"{method} needs gradients of the model, and {verdict}",
                code="method_not_supported_for_model",
                field="method",
            )
    if model.card.image is not None:
        d = model.card.image.height * model.card.image.width
    elif kind == "text":
        d = width or 1
    else:
        d = len(model.card.features)
    if kind == "tabular" and entry.samples and d > settings.max_explain_features:
        raise InvalidRequest(
            f"{method} explains at most {settings.max_explain_features} features; the model has {d}",
            code="too_many_features",
            field="method",
        )
    background_rows = min(model.background_rows, settings.background_summary_rows)
    cost = rows * evaluations_per_row(method, params, d, background_rows, kind)
    if cost > settings.max_model_evaluations:
        raise InvalidRequest(
            f"this request would cost about {cost:,} model evaluations, over the limit of "
            f"{settings.max_model_evaluations:,}; send fewer rows, lower the sample budget, or submit an audit",
            code="too_expensive",
            field="parameters",
        )
    targets = body.get("targets")
    if targets is not None:
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise InvalidRequest("targets must be a non-empty list of names", code="invalid_parameter", field="targets")
        known = model.card.output_names
        for i, target in enumerate(targets):
            if target not in known:
                raise InvalidRequest(
                    f"{target!r} is not an output of the model: {known}", code="unknown_target", field=f"targets[{i}]"
                )
    return ExplainPlan(
        model=model.name,
        version=model.version,
        sha256=model.sha256,
        variant=variant,
        method=method,
        method_reason=reason,
        parameters=params,
        targets=targets,
    )


def _choose(model: ModelVersion) -> tuple[str, str]:
    is_tree, is_linear = _graph_kind(model.sha256, model.model_path)
    differentiable = (
        not is_tree
        and not is_linear
        and len(model.card.features) > EXACT_MAX_FEATURES
        and model.background_rows > 0
        and gradient_verdict(model) is None
    )
    return choose_auto(len(model.card.features), is_tree, is_linear, differentiable=differentiable)


@functools.lru_cache(maxsize=64)
def _graph_kind(sha256: str, path: Path) -> tuple[bool, bool]:
    """Whether a model is a tree ensemble / linear; parsed once per model content, not per request."""
    from engine.methods.linear import is_linear
    from engine.methods.trees.reader import is_tree_ensemble

    onnx_bytes = path.read_bytes()
    return is_tree_ensemble(onnx_bytes), is_linear(onnx_bytes)


def _choose_perception(model: ModelVersion) -> tuple[str, str]:
    from engine.explain.perception import choose_auto as choose_for_kind

    return choose_for_kind(model.card.input_kind, gradient_verdict(model) is None, bool(convolutions(model)))


def gradients_installed() -> bool:
    """Whether the ``gradients`` extra (torch, onnx2torch, captum) is installed, without importing it."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("torch", "onnx2torch", "captum"))


def gradient_verdict(model: ModelVersion) -> str | None:
    """Why gradient methods cannot explain ``model`` (naming the operator or input), or ``None`` when they can."""
    if not gradients_installed():
        return "the server lacks the 'gradients' extra (torch, torchvision, onnx2torch, captum)"
    if model.card.input_kind == "text":
        if model.card.text is None or model.card.text.tokenizer is None:
            return "this text model takes strings (integrated gradients needs a token-id model)"
        if len(model.signature.inputs) > 1:
            # The converted module would need the mask as a second argument; Captum's layer IG feeds one.
            return "integrated gradients on token ids needs a model whose only input is the ids (no attention mask)"
        return _embedding_verdict(model.sha256, model.model_path, model.signature.explained_output)
    if model.card.input_kind == "tabular":
        from engine.models.screening import is_single_tensor

        one_hot = [f.name for f in model.card.features if f.encoding == "one_hot"]
        if not is_single_tensor(model.signature.inputs, model.card.feature_names) or one_hot:
            # Gradients are taken over one float tensor whose columns are the card's features.
            return "the model does not take its features as one float tensor " + (
                f"(feature {one_hot[0]!r} is one-hot encoded)" if one_hot else "(it has one input per feature)"
            )
    return _gradient_verdict(model.sha256, model.model_path, model.signature.explained_output)


def convolutions(model: ModelVersion) -> list[str]:
    """The model's 2-D convolutions (Grad-CAM's layers), in graph order."""
    return list(_convolutions(model.sha256, model.model_path, model.signature.explained_output))


@functools.lru_cache(maxsize=64)
def _gradient_verdict(sha256: str, path: Path, output: str) -> str | None:
    import onnx

    from engine.methods.differentiable import check

    verdict = check(onnx.load_model_from_string(path.read_bytes()), output)
    return None if verdict.ok else verdict.reason


@functools.lru_cache(maxsize=64)
def _embedding_verdict(sha256: str, path: Path, output: str) -> str | None:
    import onnx

    from engine.methods.differentiable import check_embedding

    verdict = check_embedding(onnx.load_model_from_string(path.read_bytes()), output)
    return None if verdict.ok else verdict.reason


@functools.lru_cache(maxsize=64)
def _convolutions(sha256: str, path: Path, output: str) -> tuple[str, ...]:
    import onnx

    from engine.methods.differentiable import conv_layers

    return tuple(conv_layers(onnx.load_model_from_string(path.read_bytes()), output))


def methods_for(model: ModelVersion) -> list[dict[str, Any]]:
    """The methods of the table that explain this model's input kind, and whether each applies (with why not).

    Gradient methods are checked against the graph (no torch): a tree ensemble or a string input says so
    here, before anyone asks. ``grad_cam`` lists its layers.
    """
    kind = model.card.input_kind
    out: list[dict[str, Any]] = []
    for name, entry in METHODS.items():
        if kind not in entry.input_kinds:
            continue
        item: dict[str, Any] = {"name": name, "applies": True}
        if model.card.task not in entry.tasks:
            item.update(applies=False, reason=f"explains {' and '.join(entry.tasks)} models only")
        elif entry.needs_background and kind == "tabular" and model.background_rows == 0:
            item.update(applies=False, reason="needs background rows; register the model with a 'background' part")
        elif entry.gradients:
            why = gradient_verdict(model)
            if why is not None:
                item.update(applies=False, reason=why)
            elif name == "grad_cam":
                layers = convolutions(model)
                if layers:
                    item["layers"] = layers
                else:
                    item.update(applies=False, reason="the graph has no 2-D convolution")
        out.append(item)
    return out

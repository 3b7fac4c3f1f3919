"""Explanations of image and text models, from validated inputs to the attribution JSON of each input.

:func:`explain_inputs` runs one method over a batch of unit images or texts
and, for every input and target, adds what a person can read beside the
numbers:

* images — ``map`` (the attribution map at input resolution,
  :func:`engine.explain.visual.encode_map`) and ``heatmap_png`` (base64 PNG
  over the input);
* texts — ``attributions`` (one per word: ``token``, ``start``, ``end``,
  ``attribution``) and ``highlight_html``;
* both — ``faithfulness`` (deletion and insertion curves and their AUCs
  against random orders, :mod:`engine.explain.faithfulness`), ``base_value``
  and ``quality.additivity_residual`` for additive methods.

The model is described by a :class:`PerceptionModel` — scoring functions with
onnxruntime behind them — so this module knows no store and no session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.explain.faithfulness import faithfulness, image_composer, text_composer
from engine.explain.visual import encode_map, heatmap_png, highlight_html
from engine.methods.maps import MapAttribution, baseline_image
from engine.models.image import ImageSpec
from engine.models.text import TextSpec, TokenIds, words

IMAGE_METHODS = ("grad_cam", "saliency", "integrated_gradients", "smoothgrad", "occlusion", "lime", "partition")
TEXT_METHODS = ("lime", "partition", "occlusion", "integrated_gradients")
GRADIENT_METHODS = frozenset({"grad_cam", "saliency", "integrated_gradients", "smoothgrad"})


@dataclass
class PerceptionModel:
    """An image or text model as the methods see it.

    Attributes:
        kind: ``image`` or ``text``.
        onnx_bytes: The serialized graph (gradient methods convert it).
        output: The explained ONNX output's name.
        output_names: The output columns' names (class names).
        f: Unit images ``(n, H, W, C)`` or texts → ``(n, k)`` explained outputs.
        image: The card's image spec (image models).
        text: The card's text spec (text models).
        encoder: Token ids for token-id text models.
        reference: The served session on model-layout tensors (or token ids),
            for checking a torch conversion; ``None`` when not available.
        reference_inputs: Model-layout rows to check a conversion on (background, or the inputs).
        reference_key: Names the served session (``fp32`` or a variant kind).
        background: Background unit images, for ``baseline="background"``.
    """

    kind: str
    onnx_bytes: bytes
    output: str
    output_names: list[str]
    f: Callable[[Any], FloatArray]
    image: ImageSpec | None = None
    text: TextSpec | None = None
    encoder: TokenIds | None = None
    reference: Callable[[np.ndarray], np.ndarray] | None = None
    reference_inputs: np.ndarray | None = None
    reference_key: str = "fp32"
    background: FloatArray | None = None
    _converted: Any = field(default=None, repr=False)

    def converted(self) -> Any:
        """The graph converted to torch and checked (``engine.methods.gradients``), once per model object."""
        if self._converted is None:
            try:
                from engine.methods import gradients
            except ImportError as exc:  # the optional ``gradients`` extra (torch, onnx2torch, captum) is absent
                raise InvalidRequest(
                    f"gradient methods need the 'gradients' extra (torch, onnx2torch, captum): {exc}",
                    code="method_not_supported_for_model",
                    field="method",
                ) from exc
            if self.reference is None or self.reference_inputs is None:
                raise InvalidRequest("no reference rows to check the conversion on", code="background_required")
            self._converted = gradients.convert(
                self.onnx_bytes,
                self.output,
                check_inputs=self.reference_inputs,
                reference=self.reference,
                reference_key=self.reference_key,
                token_ids=self.encoder is not None,
            )
        return self._converted


def choose_auto(kind: str, differentiable: bool, has_convolution: bool) -> tuple[str, str]:
    """Pick a method for an image or text model and say why.

    Args:
        kind: ``image`` or ``text``.
        differentiable: Gradient methods apply (the graph check passed).
        has_convolution: The graph has a 2-D convolution (Grad-CAM's layer).
    """
    if kind == "image":
        if differentiable and has_convolution:
            return "grad_cam", (
                "The model is a differentiable CNN, so Grad-CAM on its last convolution gives a map "
                "in one backward pass."
            )
        return "occlusion", (
            "The model is not differentiable through a convolution, so occlusion (model-agnostic, "
            "batched through onnxruntime) maps it."
        )
    return "partition", (
        "Text models are explained with shap's Partition explainer over words: model-agnostic and "
        "additive (attributions sum to output minus base)."
    )


def explain_inputs(
    model: PerceptionModel,
    method: str,
    params: Mapping[str, Any],
    inputs: Sequence[Any],
    targets: list[list[int]],
) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Explain each input for its targets.

    Args:
        model: The model.
        method: A method that explains ``model.kind`` inputs.
        params: Its validated parameters (``seed`` included); ``faithfulness_steps``
            and ``faithfulness_random_orders`` tune the curves.
        inputs: Unit images ``(H, W, C)`` or texts.
        targets: For each input, the output columns to explain.

    Returns:
        For each input, one JSON target object per target; and the method's
        facts for the response's ``parameters``.

    Raises:
        InvalidRequest: The method does not apply or a parameter does not fit.
        ExplanationFailed: The method or the model failed.
    """
    allowed = IMAGE_METHODS if model.kind == "image" else TEXT_METHODS
    if method not in allowed:
        raise InvalidRequest(
            f"{method} does not explain {model.kind} models; these do: {', '.join(allowed)}",
            code="method_not_applicable",
            field="method",
        )
    out: list[list[dict[str, Any]]] = []
    info: dict[str, Any] = {}
    for x, wanted in zip(inputs, targets, strict=True):
        result = _run(model, method, params, x, wanted)
        info = {k: v for k, v in result.info.items() if k != "layers"}
        out.append([_target(model, method, params, x, result, j) for j in range(len(wanted))])
    return out, info


def _run(model: PerceptionModel, method: str, params: Mapping[str, Any], x: Any, targets: list[int]) -> MapAttribution:
    seed = int(params.get("seed", 0))
    if model.kind == "image":
        return _run_image(model, method, params, np.asarray(x, dtype=np.float64), targets, seed)
    return _run_text(model, method, params, str(x), targets, seed)


def _run_image(
    model: PerceptionModel, method: str, params: Mapping[str, Any], image: FloatArray, targets: list[int], seed: int
) -> MapAttribution:
    spec = model.image
    assert spec is not None  # image models always carry their spec
    background = model.background
    baseline = str(params.get("baseline", "black"))
    if method == "occlusion":
        from engine.methods.occlusion import occlude_image

        return occlude_image(
            model.f,
            image,
            targets,
            patch=params.get("patch"),
            stride=params.get("stride"),
            baseline=baseline,
            background=background,
        )
    if method == "lime":
        from engine.methods.lime_image import lime_image

        return lime_image(
            model.f,
            image,
            targets,
            num_samples=int(params.get("num_samples", 1000)),
            segments=int(params.get("segments", 16)),
            segmentation=str(params.get("segmentation", "slic")),
            hide=str(params.get("hide", "black")),
            seed=seed,
        )
    if method == "partition":
        from engine.methods.partition import partition_image

        return partition_image(
            model.f,
            image,
            targets,
            max_evals=int(params.get("max_evals", 1000)),
            baseline=baseline,
            background=background,
            seed=seed,
        )
    from engine.methods import gradients

    converted = model.converted()
    if method == "grad_cam":
        return gradients.grad_cam(converted, spec, model.f, image, targets, layer=params.get("layer"))
    if method == "saliency":
        return gradients.saliency(converted, spec, model.f, image, targets)
    if method == "smoothgrad":
        return gradients.smoothgrad(
            converted,
            spec,
            model.f,
            image,
            targets,
            samples=int(params.get("samples", 32)),
            noise=float(params.get("noise", 0.15)),
            seed=seed,
        )
    return gradients.integrated_gradients(
        converted,
        spec,
        model.f,
        image,
        targets,
        baseline=baseline,
        steps=int(params.get("steps", 64)),
        background=background,
    )


def _run_text(
    model: PerceptionModel, method: str, params: Mapping[str, Any], text: str, targets: list[int], seed: int
) -> MapAttribution:
    if method == "occlusion":
        from engine.methods.occlusion import occlude_text

        return occlude_text(model.f, text, targets)
    if method == "lime":
        from engine.methods.lime_text import lime_text

        return lime_text(model.f, text, targets, num_samples=int(params.get("num_samples", 1000)), seed=seed)
    if method == "partition":
        from engine.methods.partition import partition_text

        return partition_text(model.f, text, targets, max_evals=int(params.get("max_evals", 500)), seed=seed)
    if model.encoder is None:
        raise InvalidRequest(
            "integrated_gradients explains token-id text models (a tokenizer in the card); this model takes strings",
            code="method_not_supported_for_model",
            field="method",
        )
    from engine.methods import gradients

    return gradients.token_integrated_gradients(
        model.converted(), model.encoder, model.f, text, targets, steps=int(params.get("steps", 64))
    )


def _target(
    model: PerceptionModel, method: str, params: Mapping[str, Any], x: Any, result: MapAttribution, j: int
) -> dict[str, Any]:
    target = result.targets[j]
    values = result.maps[j]
    entry: dict[str, Any] = {"target": model.output_names[target], "output_value": float(result.output_values[j])}
    quality: dict[str, Any] = dict(result.quality[j]) if result.quality else {}
    residuals = result.additivity_residual()
    if result.base_values is not None and residuals is not None:
        entry["base_value"] = float(result.base_values[j])
        quality["additivity_residual"] = residuals[j]
    steps = int(params.get("faithfulness_steps", 10))
    orders = int(params.get("faithfulness_random_orders", 4))
    seed = int(params.get("seed", 0))
    if model.kind == "image":
        image = np.asarray(x, dtype=np.float64)
        entry["map"] = encode_map(values)
        entry["heatmap_png"] = heatmap_png(image, values, signed=result.signed)
        kind = str(params.get("baseline", "black"))
        removed = baseline_image(
            image, kind if kind in ("black", "blurred", "background") else "black", model.background
        )
        score = image_composer(model.f, image, removed)
        entry["faithfulness"] = {
            "removal": kind,
            **faithfulness(score, values, target, steps=steps, random_orders=orders, seed=seed),
        }
    else:
        text = str(x)
        tokens = words(text)
        entry["attributions"] = [{**t.to_dict(), "attribution": float(v)} for t, v in zip(tokens, values, strict=True)]
        entry["highlight_html"] = highlight_html(text, tokens, [float(v) for v in values])
        score = text_composer(model.f, text)
        entry["faithfulness"] = {
            "removal": "cut",
            **faithfulness(score, values, target, steps=min(steps, len(tokens)), random_orders=orders, seed=seed),
        }
    entry["signed"] = result.signed
    entry["quality"] = quality
    return entry

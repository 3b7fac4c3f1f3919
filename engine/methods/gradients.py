"""Gradient methods from the ONNX graph: Grad-CAM, saliency, integrated gradients, SmoothGrad.

The graph (cut down to the explained output) is converted to a torch module
with onnx2torch once per process and model, and the conversion is checked
against onnxruntime on reference rows before any gradient is trusted: a
largest absolute difference over ``tolerance`` (1e-4) refuses the model for
gradient methods, as does a graph that cannot be converted or is not
differentiable (trees, string operators), each with
``method_not_supported_for_model`` naming the operator.

Image methods take unit images ``(H, W, C)``: the card's scaling, mean/std,
channel order and layout are applied inside the differentiated function, so
gradients are with respect to the pixels a person sees and maps come out at
the input's resolution. Captum does the attributions:

* ``grad_cam`` — ``LayerGradCam`` on the last convolution (or a named one),
  ReLU'd and upsampled bilinearly to the input; not additive.
* ``saliency`` — ``Saliency`` (absolute gradient, largest over channels).
* ``integrated_gradients`` — ``IntegratedGradients`` from a black, blurred
  or mean-background baseline; attributions summed over channels add up to
  ``f(x) − f(baseline)`` up to the reported ``convergence_delta``.
* ``smoothgrad`` — ``NoiseTunnel`` over ``Saliency``, noise drawn from a
  torch generator seeded per explanation (same seed, same map).

Tabular models (MLPs) get ``integrated_gradients`` and ``saliency`` over
their feature vector. Token-id text models get ``integrated_gradients`` on
their embedding lookup (``LayerIntegratedGradients``, from the embeddings
of padding), summed per token and then per word through the tokenizer's
character offsets.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel, Saliency

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.differentiable import check, check_embedding, conv_layers, output_subgraph
from engine.methods.maps import ImageFn, MapAttribution, TextFn, baseline_image
from engine.models.image import ImageSpec
from engine.models.text import TokenIds, words

TOLERANCE = 1e-4
"""Largest |torch − onnxruntime| on the reference rows for gradients to be trusted."""
_CACHE_SIZE = 8
CODE = "method_not_supported_for_model"
# One thread: the worker runs one job at a time and onnxruntime has its own threads; torch's
# default (all cores) oversubscribed our two-core machine by a factor of thirty in training.
torch.set_num_threads(1)


@dataclass
class Converted:
    """A graph converted to torch and checked against onnxruntime.

    Attributes:
        module: The torch module, in eval mode, from the model's input tensor to the explained output.
        max_abs_diff: Largest |torch − onnxruntime| seen on the reference rows.
        checked_rows: How many reference rows were compared.
        layers: ONNX names of the 2-D convolutions (Grad-CAM layers), in graph order.
        layer_modules: The torch modules of ``layers``, same order.
    """

    module: torch.nn.Module
    max_abs_diff: float
    checked_rows: int
    layers: list[str]
    layer_modules: list[torch.nn.Module]
    embedding: torch.nn.Module | None = None

    def facts(self) -> dict[str, Any]:
        """What the response records about the conversion."""
        return {"max_abs_diff": self.max_abs_diff, "checked_rows": self.checked_rows, "tolerance": TOLERANCE}


_cache: OrderedDict[tuple[str, str, str], Converted | InvalidRequest] = OrderedDict()
_lock = threading.Lock()


def refuse(detail: str) -> InvalidRequest:
    """The error a model that gradient methods cannot use gets (422 ``method_not_supported_for_model``)."""
    return InvalidRequest(detail, code=CODE, field="method")


def convert(
    onnx_bytes: bytes,
    output: str,
    *,
    check_inputs: np.ndarray,
    reference: Callable[[np.ndarray], np.ndarray],
    reference_key: str = "fp32",
    token_ids: bool = False,
) -> Converted:
    """Convert the graph to torch once and check it against ``reference`` (onnxruntime).

    Args:
        onnx_bytes: The serialized model.
        output: The ONNX output to explain.
        check_inputs: Rows in the model's input layout (background rows) to compare on.
        reference: onnxruntime's explained output for ``check_inputs`` (the session that is served).
        reference_key: Names the served session (``fp32`` or a variant), part of the cache key.
        token_ids: The model takes token ids: gradients are taken at its embedding lookup.

    Returns:
        The converted module; cached per (model sha256, output, reference_key).

    Raises:
        InvalidRequest: ``method_not_supported_for_model`` naming the operator
            or the disagreement.
    """
    key = (hashlib.sha256(onnx_bytes).hexdigest(), output, reference_key + (":tokens" if token_ids else ""))
    with _lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if found is None:
        try:
            found = _convert(onnx_bytes, output, check_inputs, reference, token_ids)
        except InvalidRequest as exc:
            found = exc
        with _lock:
            _cache[key] = found
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
    if isinstance(found, InvalidRequest):
        raise refuse(found.detail)
    return found


def _convert(
    onnx_bytes: bytes,
    output: str,
    check_inputs: np.ndarray,
    reference: Callable[[np.ndarray], np.ndarray],
    token_ids: bool,
) -> Converted:
    from onnx2torch import convert as onnx_to_torch
    from onnx2torch.node_converters.gather import OnnxGather

    model = onnx.load_from_string(onnx_bytes)
    if token_ids:
        embedding = check_embedding(model, output)
        if not embedding.ok:
            raise refuse(f"integrated gradients on token ids needs an embedding lookup: {embedding.reason}")
    else:
        verdict = check(model, output)
        if not verdict.ok:
            raise refuse(f"gradient methods need a differentiable graph: {verdict.reason}")
    try:
        module = onnx_to_torch(output_subgraph(model, output))
    except NotImplementedError as exc:
        found = re.search(r"operation_type='([^']+)'", str(exc))
        operator = found.group(1) if found else str(exc)
        raise refuse(f"the graph cannot be converted to torch: operator {operator} is not supported") from exc
    except Exception as exc:  # onnx2torch raises bare errors on graphs it cannot read
        raise refuse(f"the graph cannot be converted to torch: {type(exc).__name__}: {exc}") from exc
    module = module.eval()
    integer = np.issubdtype(np.asarray(check_inputs).dtype, np.integer)
    inputs = np.ascontiguousarray(check_inputs, dtype=np.int64 if integer else np.float32)
    with torch.no_grad():
        mine = _output(module(torch.from_numpy(inputs))).double().numpy()
    theirs = np.asarray(reference(inputs), dtype=np.float64).reshape(mine.shape)
    diff = float(np.max(np.abs(mine - theirs))) if mine.size else 0.0
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise refuse(
            f"the graph converted to torch disagrees with onnxruntime by {diff:.3g} on {len(inputs)} reference rows "
            f"(over {TOLERANCE:g}), so its gradients cannot be trusted"
        )
    layers = conv_layers(model, output)
    convs: list[torch.nn.Module] = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    lookup = None
    if token_ids:
        # onnx2torch adds one module per node in graph order, so the i-th Gather node is the i-th OnnxGather.
        gathers = [m for m in module.modules() if isinstance(m, OnnxGather)]
        lookup = gathers[embedding.gather_index] if embedding.gather_index < len(gathers) else None
        if lookup is None:
            raise refuse("the embedding lookup was not found in the converted module")
    return Converted(module, diff, len(inputs), layers[: len(convs)], convs[: len(layers)], lookup)


def _output(value: Any) -> torch.Tensor:
    """The one explained output of a converted module (onnx2torch returns a tuple for several)."""
    if isinstance(value, tuple | list):
        value = value[0]
    out: torch.Tensor = value if value.ndim > 1 else value.reshape(-1, 1)
    return out


class _UnitImages(torch.nn.Module):
    """Unit images ``(n, H, W, C)`` → the card's scaling, mean/std, order and layout → the model."""

    def __init__(self, module: torch.nn.Module, spec: ImageSpec) -> None:
        super().__init__()
        self.module = module
        self.spec = spec
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(spec.channel_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(spec.channel_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.spec.scale_factor
        if self.spec.channels == "BGR":
            x = torch.flip(x, dims=(-1,))
        x = (x - self.mean) / self.std
        if self.spec.layout == "NCHW":
            x = x.permute(0, 3, 1, 2)
        return _output(self.module(x))


class _Rows(torch.nn.Module):
    """Feature rows ``(n, d)`` straight into the model."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _output(self.module(x))


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _layer(converted: Converted, name: str | None) -> tuple[str, torch.nn.Module]:
    if not converted.layers:
        raise refuse("grad_cam needs a 2-D convolution in the graph, and this one has none")
    if name is None:
        return converted.layers[-1], converted.layer_modules[-1]
    if name not in converted.layers:
        raise InvalidRequest(
            f"layer {name!r} is not a convolution of the model; its layers: {converted.layers}",
            code="invalid_parameter",
            field="parameters.layer",
        )
    i = converted.layers.index(name)
    return name, converted.layer_modules[i]


def grad_cam(
    converted: Converted,
    spec: ImageSpec,
    f: ImageFn,
    image: FloatArray,
    targets: list[int],
    *,
    layer: str | None = None,
) -> MapAttribution:
    """Grad-CAM of one unit image at a convolution layer (default: the last), upsampled to ``(H, W)``."""
    name, module = _layer(converted, layer)
    forward = _UnitImages(converted.module, spec)
    x = _tensor(image[None])
    maps = []
    cam = LayerGradCam(forward, module)
    for t in targets:
        attr = cam.attribute(x, target=t, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, (spec.height, spec.width), interpolate_mode="bilinear")
        maps.append(up.detach().double().numpy().reshape(spec.height, spec.width))
    out = np.asarray(f(image[None]), dtype=np.float64)[0]
    return MapAttribution(
        list(targets),
        np.stack(maps),
        out[targets],
        info={"layer": name, "layers": converted.layers, "conversion": converted.facts()},
        signed=False,
    )


def saliency(
    converted: Converted, spec: ImageSpec, f: ImageFn, image: FloatArray, targets: list[int]
) -> MapAttribution:
    """Absolute input gradient of one unit image, the largest over channels."""
    forward = _UnitImages(converted.module, spec)
    method = Saliency(forward)
    maps = [
        method.attribute(_tensor(image[None]).requires_grad_(), target=t, abs=True).detach().double().numpy()[0].max(-1)
        for t in targets
    ]
    out = np.asarray(f(image[None]), dtype=np.float64)[0]
    return MapAttribution(
        list(targets), np.stack(maps), out[targets], info={"conversion": converted.facts()}, signed=False
    )


def smoothgrad(
    converted: Converted,
    spec: ImageSpec,
    f: ImageFn,
    image: FloatArray,
    targets: list[int],
    *,
    samples: int = 32,
    noise: float = 0.15,
    seed: int = 0,
) -> MapAttribution:
    """SmoothGrad: saliency averaged over ``samples`` noisy copies (std ``noise`` in unit pixels)."""
    forward = _UnitImages(converted.module, spec)
    method = NoiseTunnel(Saliency(forward))
    maps = []
    for t in targets:
        # fork_rng keeps the global torch state untouched; the seed is reset per target, so each map is reproducible.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            attr = method.attribute(
                _tensor(image[None]), nt_type="smoothgrad", nt_samples=samples, stdevs=noise, target=t, abs=True
            )
        maps.append(attr.detach().double().numpy()[0].max(-1))
    out = np.asarray(f(image[None]), dtype=np.float64)[0]
    return MapAttribution(
        list(targets),
        np.stack(maps),
        out[targets],
        info={"samples": samples, "noise": noise, "conversion": converted.facts()},
        signed=False,
    )


def integrated_gradients(
    converted: Converted,
    spec: ImageSpec,
    f: ImageFn,
    image: FloatArray,
    targets: list[int],
    *,
    baseline: str = "black",
    steps: int = 64,
    background: FloatArray | None = None,
) -> MapAttribution:
    """Integrated gradients of one unit image from a baseline, summed over channels.

    ``base_values`` are onnxruntime's outputs at the baseline, so the
    additivity residual is the method's completeness gap (Captum's
    ``convergence_delta`` plus the conversion's difference).
    """
    reference = baseline_image(image, baseline, background)
    forward = _UnitImages(converted.module, spec)
    method = IntegratedGradients(forward)
    maps, quality = [], []
    for t in targets:
        attr, delta = method.attribute(
            _tensor(image[None]),
            baselines=_tensor(reference[None]),
            target=t,
            n_steps=steps,
            internal_batch_size=steps,
            return_convergence_delta=True,
        )
        maps.append(attr.detach().double().numpy()[0].sum(-1))
        quality.append({"convergence_delta": float(delta.detach().double().reshape(-1)[0])})
    scores = np.asarray(f(np.stack([image, reference])), dtype=np.float64)
    return MapAttribution(
        list(targets),
        np.stack(maps),
        scores[0, targets],
        base_values=scores[1, targets],
        quality=quality,
        info={"baseline": baseline, "steps": steps, "conversion": converted.facts()},
    )


def tabular_gradients(
    converted: Converted,
    f: Callable[[FloatArray], FloatArray],
    X: FloatArray,
    targets: list[list[int]],
    *,
    method: str,
    baseline: FloatArray | None = None,
    steps: int = 64,
) -> list[MapAttribution]:
    """Integrated gradients or saliency for rows of a differentiable tabular model (an MLP).

    Args:
        converted: The converted model (input: the ``(n, d)`` float feature tensor).
        f: onnxruntime's explained output for rows.
        X: ``(n, d)`` rows in the model's feature order.
        targets: Output columns per row.
        method: ``integrated_gradients`` or ``saliency`` (the gradient itself, signed).
        baseline: ``(d,)`` reference row for integrated gradients (e.g. the background mean).
        steps: Integration steps.
    """
    forward = _Rows(converted.module)
    out = []
    for i, row in enumerate(X):
        x = _tensor(row[None])
        maps, quality = [], []
        base_values = None
        if method == "integrated_gradients":
            ref = np.zeros_like(row) if baseline is None else np.asarray(baseline, dtype=np.float64)
            ig = IntegratedGradients(forward)
            for t in targets[i]:
                attr, delta = ig.attribute(
                    x, baselines=_tensor(ref[None]), target=t, n_steps=steps, return_convergence_delta=True
                )
                maps.append(attr.detach().double().numpy()[0])
                quality.append({"convergence_delta": float(delta.detach().double().reshape(-1)[0])})
            scores = np.asarray(f(np.stack([row, ref])), dtype=np.float64)
            base_values = scores[1, targets[i]]
            output = scores[0, targets[i]]
        else:
            grad = Saliency(forward)
            maps = [
                grad.attribute(x.requires_grad_(), target=t, abs=False).detach().double().numpy()[0] for t in targets[i]
            ]
            output = np.asarray(f(row[None]), dtype=np.float64)[0, targets[i]]
        out.append(
            MapAttribution(
                list(targets[i]),
                np.stack(maps),
                output,
                base_values=base_values,
                quality=quality,
                info={
                    "conversion": converted.facts(),
                    **({"steps": steps} if method == "integrated_gradients" else {}),
                },
            )
        )
    return out


class _TokenIds(torch.nn.Module):
    """Token ids ``(n, L)`` straight into the model."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _output(self.module(ids))


def token_integrated_gradients(
    converted: Converted, encoder: TokenIds, f: TextFn, text: str, targets: list[int], *, steps: int = 64
) -> MapAttribution:
    """Integrated gradients at the embedding lookup of a token-id model, one value per word of ``text``.

    The baseline replaces every token by padding (``encoder.pad_id``). Token
    attributions (summed over the embedding) are added up per word through the
    tokenizer's character offsets; tokens past ``max_length`` were never seen
    and leave their words at 0. ``base_values`` are the model at the all-padding
    baseline, so the residual is the completeness gap.
    """
    from captum.attr import LayerIntegratedGradients

    if converted.embedding is None:
        raise refuse("the model was not converted for token ids")
    ids, _ = encoder.encode([text])
    encoding = encoder.tokenizer.encode(text)
    offsets = encoding.offsets[: encoder.max_length]
    forward = _TokenIds(converted.module)
    method = LayerIntegratedGradients(forward, converted.embedding)
    x = torch.from_numpy(ids)
    baseline = torch.full_like(x, encoder.pad_id)
    tokens = words(text)
    maps, quality = [], []
    for t in targets:
        attr, delta = method.attribute(
            x, baselines=baseline, target=t, n_steps=steps, internal_batch_size=steps, return_convergence_delta=True
        )
        per_token = attr.detach().double().numpy()[0].sum(-1)
        per_word = np.zeros(len(tokens))
        for j, (start, end) in enumerate(offsets):
            if end <= start:
                continue  # special tokens ([CLS], padding) carry no characters
            for w, token in enumerate(tokens):
                if start < token.end and token.start < end:
                    per_word[w] += per_token[j]
                    break
        maps.append(per_word)
        quality.append({"convergence_delta": float(delta.detach().double().reshape(-1)[0])})
    with torch.no_grad():
        base = forward(baseline).double().numpy()[0]
    out = np.asarray(f([text]), dtype=np.float64)[0]
    return MapAttribution(
        list(targets),
        np.stack(maps),
        out[targets],
        base_values=base[targets],
        quality=quality,
        info={"steps": steps, "baseline": "padding", "tokens": len(offsets), "conversion": converted.facts()},
    )

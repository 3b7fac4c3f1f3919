"""Pruned variants: zero small weights (``prune_magnitude``) or remove whole neurons (``prune_structured``).

Both work on the ONNX graph's constant weights with numpy; whether a pruned
model is good enough to serve is :mod:`engine.variants.fidelity`'s call.

- Magnitude pruning zeroes the smallest-|w| fraction of each ``MatMul``/``Gemm``/``Conv``
  constant weight, per tensor. onnxruntime's CPU kernels are dense, so the file and the
  speed stay the same; the report says so and ``fastest`` never picks it.
- Structured pruning removes the hidden units with the smallest L1 norm of incoming
  weights where the rewiring is provably safe: a dense layer (``MatMul`` [+ constant
  ``Add``] or ``Gemm``) or an ungrouped ``Conv``, then one unary elementwise activation,
  then another such layer, each tensor between them used once and every weight and bias
  used by that layer only. The first layer loses output columns/filters (and bias
  entries), the next the matching input rows/channels. Every other layer is left as is.

Example::

    pruned, info = prune(model_bytes, "prune_structured", 0.5)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import ModelProto, NodeProto, numpy_helper

from engine.errors import ExplanationFailed, InvalidRequest, ModelRejected

PRUNE_KINDS = ("prune_magnitude", "prune_structured")
DEFAULT_SPARSITY = 0.5
# Unary ops that act on each element alone: removing a unit before them removes it after them.
ACTIVATIONS = frozenset(
    {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Softplus", "Softsign", "HardSigmoid", "Gelu"}
)


def check_sparsity(value: object) -> float:
    """Validate a requested sparsity: a number strictly between 0 and 1.

    Raises:
        InvalidRequest: ``invalid_parameter`` naming ``sparsity``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < float(value) < 1.0:
        raise InvalidRequest(
            f"sparsity must be a number with 0 < sparsity < 1, got {value!r}",
            code="invalid_parameter",
            field="sparsity",
        )
    return float(value)


def prune(model_bytes: bytes, kind: str, sparsity: float = DEFAULT_SPARSITY) -> tuple[bytes, dict[str, Any]]:
    """Prune an fp32 model.

    Args:
        model_bytes: The serialized fp32 ONNX model.
        kind: ``prune_magnitude`` or ``prune_structured``.
        sparsity: Fraction of each weight tensor zeroed (magnitude) or of each prunable layer's
            hidden units removed (structured).

    Returns:
        The pruned model (checked by ``onnx.checker`` with ``full_check``) and a JSON-ready
        report: ``method``, ``sparsity_requested``, and for magnitude ``sparsity_achieved``
        (zeros / elements over the pruned initializers) and ``tensors``; for structured
        ``units_removed_fraction``, ``layers`` (the pruned pairs) and ``untouched`` (the
        weighted nodes left as they were); plus ``speeds_up`` and a ``note``.

    Raises:
        InvalidRequest: ``invalid_variant`` (unknown kind), ``invalid_parameter`` (sparsity),
            ``nothing_to_prune`` (no constant weight, or no structure safe to prune).
        ModelRejected: The bytes are not an ONNX model.
        ExplanationFailed: ``pruning_failed`` when the pruned graph does not check.
    """
    if kind not in PRUNE_KINDS:
        raise InvalidRequest(f"unknown pruning {kind!r}, not in {PRUNE_KINDS}", code="invalid_variant", field="kind")
    sparsity = check_sparsity(sparsity)
    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelRejected(f"not an ONNX model: {exc}", code="invalid_model") from exc
    info = _magnitude(model, sparsity) if kind == "prune_magnitude" else _structured(model, sparsity)
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx's checker and shape inference raise several types
        raise ExplanationFailed(f"the pruned graph is not valid: {exc}", code="pruning_failed") from exc
    return bytes(model.SerializeToString()), {"method": kind, "sparsity_requested": sparsity, **info}


def weight_sparsity(model_bytes: bytes) -> float:
    """Return the fraction of zeros over the constant weights of ``MatMul``/``Gemm``/``Conv`` nodes."""
    model = onnx.load_model_from_string(model_bytes)
    arrays = [numpy_helper.to_array(t) for t in _weight_tensors(model)]
    total = sum(a.size for a in arrays)
    return sum(int(np.count_nonzero(a == 0)) for a in arrays) / total if total else 0.0


def _weight_tensors(model: ModelProto) -> list[onnx.TensorProto]:
    """The initializers that are weights of a MatMul (either input), Gemm or Conv (second input), once each."""
    inits = {t.name: t for t in model.graph.initializer}
    names: dict[str, None] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul":
            candidates = list(node.input[:2])
        elif node.op_type in ("Gemm", "Conv"):
            candidates = list(node.input[1:2])
        else:
            continue
        names.update({n: None for n in candidates if n in inits and inits[n].data_type == onnx.TensorProto.FLOAT})
    return [inits[n] for n in names]


def _magnitude(model: ModelProto, sparsity: float) -> dict[str, Any]:
    """Zero the smallest-|w| ``sparsity`` fraction of each weight tensor in place."""
    tensors = _weight_tensors(model)
    if not tensors:
        raise InvalidRequest("no MatMul, Gemm or Conv with constant float weights to prune", code="nothing_to_prune")
    report, zeros, total = [], 0, 0
    for tensor in tensors:
        weights = numpy_helper.to_array(tensor).copy()
        count = int(np.floor(sparsity * weights.size))
        if count:
            # argsort, not a threshold: ties at the threshold would zero more than asked.
            smallest = np.argsort(np.abs(weights), axis=None, kind="stable")[:count]
            weights.reshape(-1)[smallest] = 0.0
        tensor.CopyFrom(numpy_helper.from_array(weights, tensor.name))
        got = int(np.count_nonzero(weights == 0))
        report.append({"name": tensor.name, "elements": int(weights.size), "zeros": got})
        zeros, total = zeros + got, total + int(weights.size)
    return {
        "sparsity_achieved": zeros / total,
        "tensors": report,
        "speeds_up": False,
        "note": (
            "unstructured sparsity: the zeros stay stored and onnxruntime's dense CPU kernels multiply them, so "
            "neither size nor speed improves; speedup is measured anyway and fastest never picks this variant"
        ),
    }


@dataclass
class _Layer:
    """A prunable layer: its node(s), weight, bias and the axes its units live on."""

    nodes: list[NodeProto]  # the weighted node, plus a MatMul's constant Add
    weight: str
    bias: str | None
    out_axis: int  # axis of the weight holding its output units
    in_axis: int  # axis of the weight holding its input units
    output: str  # the tensor with the layer's units (after the Add)


def _structured(model: ModelProto, sparsity: float) -> dict[str, Any]:
    """Remove the lowest-L1 hidden units of every safe layer → activation → layer chain, in place."""
    graph = model.graph
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    uses.update(o.name for o in graph.output)
    consumers: dict[str, list[NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    pruned: list[dict[str, Any]] = []
    removed_units = total_units = 0
    changed: set[str] = set()
    weighted = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.domain in ("", "ai.onnx")]
    for node in weighted:
        first = _layer(node, arrays, uses, consumers)
        # Used once and by a node: a graph output also counts as a use, and has no consumer node.
        if first is None or uses[first.output] != 1 or len(consumers.get(first.output, [])) != 1:
            continue
        (activation,) = consumers[first.output]
        after = activation.output[0]
        if activation.op_type not in ACTIVATIONS or len(activation.input) != 1 or uses[after] != 1:
            continue
        if len(consumers.get(after, [])) != 1:
            continue
        (follower,) = consumers[after]
        second = _layer(follower, arrays, uses, consumers)
        kinds = {node.op_type == "Conv", follower.op_type == "Conv"}
        if second is None or len(kinds) != 1 or follower.input[0] != activation.output[0]:
            continue
        w1, w2 = arrays[first.weight], arrays[second.weight]
        units = w1.shape[first.out_axis]
        if w2.shape[second.in_axis] != units or units < 2:
            continue
        drop = min(int(round(sparsity * units)), units - 1)  # keep at least one unit
        if drop == 0:
            continue
        norms = np.abs(np.moveaxis(w1, first.out_axis, 0)).reshape(units, -1).sum(axis=1)
        keep = np.sort(np.argsort(norms, kind="stable")[drop:])
        arrays[first.weight] = np.take(w1, keep, axis=first.out_axis)
        if first.bias is not None:
            bias = arrays[first.bias]
            arrays[first.bias] = np.take(bias, keep, axis=bias.ndim - 1)
        arrays[second.weight] = np.take(w2, keep, axis=second.in_axis)
        changed.update(n for n in (first.weight, first.bias, second.weight) if n is not None)
        changed.update((first.output, activation.output[0], *(o for n in first.nodes for o in n.output)))
        pruned.append(
            {
                "layer": node.name or first.weight,
                "op": node.op_type,
                "next": follower.name or second.weight,
                "units": int(units),
                "removed": drop,
            }
        )
        removed_units, total_units = removed_units + drop, total_units + int(units)
    if not pruned:
        raise InvalidRequest(
            "no dense or convolution layer followed by an activation and another such layer: nothing to prune "
            "structurally",
            code="nothing_to_prune",
            field="kind",
        )
    for tensor in graph.initializer:
        if tensor.name in changed:
            tensor.CopyFrom(numpy_helper.from_array(arrays[tensor.name], tensor.name))
    # Shapes recorded for the rewired tensors are now wrong; onnx infers them again in the check.
    stale = [v for v in graph.value_info if v.name in changed]
    for value in stale:
        graph.value_info.remove(value)
    for value in graph.input:  # before IR 4, initializers were also declared as inputs, with their shapes
        if value.name in changed and value.name in arrays:
            shape = arrays[value.name].shape
            value.CopyFrom(onnx.helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, shape))
    return {
        "units_removed_fraction": removed_units / total_units,
        "layers": pruned,
        "untouched": [n.name or _weight_of(n) for n in weighted if _weight_of(n) not in changed],
        "speeds_up": True,
        "note": "whole hidden units removed: the weights shrink and the pruned layers do less work",
    }


def _weight_of(node: NodeProto) -> str:
    """The weight input name of a weighted node (its second input)."""
    return node.input[1] if len(node.input) > 1 else node.op_type


def _layer(
    node: NodeProto, arrays: dict[str, NDArray[Any]], uses: Counter[str], consumers: dict[str, list[NodeProto]]
) -> _Layer | None:
    """Read ``node`` as a prunable layer, or ``None`` when its structure is not one this module can rewire."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight = node.input[1] if len(node.input) > 1 else ""
    if weight not in arrays or uses[weight] != 1 or arrays[weight].dtype != np.float32:
        return None
    w = arrays[weight]
    if node.op_type == "MatMul" and w.ndim == 2:
        layer = _Layer([node], weight, None, out_axis=1, in_axis=0, output=node.output[0])
        users = consumers.get(node.output[0], [])
        if uses[node.output[0]] == 1 and len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            bias = next((n for n in add.input if n != node.output[0]), "")
            shape = arrays[bias].shape if bias in arrays else None
            if shape in ((w.shape[1],), (1, w.shape[1])) and uses[bias] == 1:
                return _Layer([node, add], weight, bias, out_axis=1, in_axis=0, output=add.output[0])
        return layer
    if node.op_type == "Gemm" and w.ndim == 2 and not attrs.get("transA", 0):
        out_axis = 0 if attrs.get("transB", 0) else 1
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (
            bias not in arrays
            or uses[bias] != 1
            or arrays[bias].shape not in ((w.shape[out_axis],), (1, w.shape[out_axis]))
        ):
            return None
        return _Layer([node], weight, bias, out_axis=out_axis, in_axis=1 - out_axis, output=node.output[0])
    if node.op_type == "Conv" and w.ndim >= 3 and attrs.get("group", 1) == 1:
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (bias not in arrays or uses[bias] != 1 or arrays[bias].shape != (w.shape[0],)):
            return None
        return _Layer([node], weight, bias, out_axis=0, in_axis=1, output=node.output[0])
    return None

"""Screening of untrusted model uploads before anything else touches them.

The order matters: cheap structural checks first (is it ONNX, does anything
point outside the file, are the operators ours to run), then the full
``onnx.checker``, then the card against the graph. Loading the model into
onnxruntime happens later, in a child process (``engine.models.probe``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from engine.errors import ModelRejected
from engine.models.card import ModelCard

ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
ALLOWED_CONTRIB_OPS = frozenset({("com.microsoft", "Tokenizer")})
"""Operators of other domains allowed one by one: skl2onnx exports scikit-learn's text vectorizers with
onnxruntime's string ``Tokenizer`` (pure string splitting: no files, no code), so text pipelines need it."""
FLOAT_TYPES = frozenset({"tensor(float)", "tensor(double)", "tensor(float16)"})
NUMERIC_TYPES = frozenset({"tensor(float)", "tensor(double)", "tensor(float16)", "tensor(int64)", "tensor(int32)"})


@dataclass(frozen=True, slots=True)
class Port:
    """One graph input or output: name, ONNX type string and shape."""

    name: str
    type: str
    shape: tuple[int | str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return the port as JSON (dynamic dimensions as ``null`` or their symbol)."""
        return {"name": self.name, "type": self.type, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Port:
        """Rebuild a port from :meth:`to_dict` output."""
        return cls(data["name"], data["type"], tuple(data["shape"]))


@dataclass(frozen=True, slots=True)
class Signature:
    """The model's inputs and outputs, plus the output chosen for explaining."""

    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    explained_output: str

    def to_dict(self) -> dict[str, Any]:
        """Return the signature as JSON."""
        return {
            "inputs": [p.to_dict() for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
            "explained_output": self.explained_output,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        """Rebuild a signature from :meth:`to_dict` output."""
        return cls(
            tuple(Port.from_dict(p) for p in data["inputs"]),
            tuple(Port.from_dict(p) for p in data["outputs"]),
            data["explained_output"],
        )


def parse_model(data: bytes) -> onnx.ModelProto:
    """Decode bytes as an ONNX model, refusing anything that is not one.

    Raises:
        ModelRejected: ``not_onnx`` when the bytes are not an ONNX model.
    """
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelRejected("the file is not an ONNX model", code="not_onnx", field="model") from exc
    # Protobuf decodes many random byte strings into an empty message.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ModelRejected("the file is not an ONNX model", code="not_onnx", field="model")
    return model


def screen_model(data: bytes, card: ModelCard) -> tuple[onnx.ModelProto, Signature]:
    """Run every static check on an upload and match it to its card.

    Args:
        data: The uploaded model bytes.
        card: The validated card sent with it.

    Returns:
        The parsed model and its signature.

    Raises:
        ModelRejected: With code ``not_onnx``, ``external_data_not_allowed``,
            ``unsupported_op_domain``, ``invalid_model`` or ``card_mismatch``.
    """
    model = parse_model(data)
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            raise ModelRejected(
                f"tensor {tensor.name!r} refers to external data",
                code="external_data_not_allowed",
                field="model",
            )
    nodes = list(_nodes(model))
    contrib = {(n.domain, n.op_type) for n in nodes if n.domain not in ALLOWED_DOMAINS}
    refused = sorted(f"{domain}:{op}" for domain, op in contrib - ALLOWED_CONTRIB_OPS)
    unused = {o.domain for o in model.opset_import} - ALLOWED_DOMAINS - {domain for domain, _ in contrib}
    if refused or unused:
        raise ModelRejected(
            f"operators {refused or sorted(unused)} are not allowed (only the '' and 'ai.onnx.ml' domains, "
            f"and {sorted(f'{d}:{o}' for d, o in ALLOWED_CONTRIB_OPS)})",
            code="unsupported_op_domain",
            field="model",
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # the checker raises several unrelated types
        raise ModelRejected(f"onnx.checker: {exc}", code="invalid_model", field="model") from exc
    return model, match_card(model, card)


def is_single_tensor(inputs: tuple[Port, ...], feature_names: list[str]) -> bool:
    """Say whether all features go in one numeric ``[N, d]`` tensor (else one input per feature)."""
    return len(inputs) == 1 and inputs[0].type != "tensor(string)"


def match_card(model: onnx.ModelProto, card: ModelCard) -> Signature:
    """Check the card against the graph and pick the explained output.

    Raises:
        ModelRejected: ``card_mismatch`` naming what disagrees.
    """
    init_names = {i.name for i in model.graph.initializer}
    inputs = tuple(_port(v) for v in model.graph.input if v.name not in init_names)
    outputs = tuple(_port(v) for v in model.graph.output)
    names = card.feature_names
    if card.image is not None:
        _match_image(inputs, card)
    elif card.input_kind == "text":
        _match_text(inputs, card)
    elif is_single_tensor(inputs, names):
        port = inputs[0]
        expected = sum(f.width for f in card.features)
        if port.type not in NUMERIC_TYPES or len(port.shape) != 2:
            _mismatch(f"input {port.name!r} must be a 2-D numeric tensor [N, {expected}]", "card.features")
        width = port.shape[1]
        if isinstance(width, int) and width != expected:
            _mismatch(f"the model takes {width} columns, the card's features make {expected}", "card.features")
    else:
        if sorted(p.name for p in inputs) != sorted(names):
            _mismatch(
                f"the model's inputs {[p.name for p in inputs]} are not the card's features {names}",
                "card.features",
            )
        for feature in card.features:
            port = next(p for p in inputs if p.name == feature.name)
            want_string = feature.type == "categorical"
            if (port.type == "tensor(string)") != want_string or (not want_string and port.type not in NUMERIC_TYPES):
                _mismatch(f"input {port.name!r} has type {port.type}, the card says {feature.type}", "card.features")
    return Signature(inputs, outputs, _explained_output(outputs, card).name)


def _match_image(inputs: tuple[Port, ...], card: ModelCard) -> None:
    """One float tensor ``[N, C, H, W]`` or ``[N, H, W, C]`` whose fixed dimensions agree with ``card.image``."""
    spec = card.image
    assert spec is not None  # only called for image cards
    if len(inputs) != 1 or inputs[0].type not in FLOAT_TYPES or len(inputs[0].shape) != 4:
        _mismatch("an image model takes one 4-D float tensor (NCHW or NHWC)", "card.image")
    port = inputs[0]
    for axis, (got, want) in enumerate(zip(port.shape[1:], spec.model_shape, strict=True), start=1):
        if isinstance(got, int) and got != want:
            _mismatch(
                f"input {port.name!r} has {got} at axis {axis}; the card's {spec.layout} image is "
                f"{list(spec.model_shape)}",
                "card.image",
            )


_INT_TYPES = ("tensor(int64)", "tensor(int32)")


def _match_text(inputs: tuple[Port, ...], card: ModelCard) -> None:
    """One string tensor ``[N]`` or ``[N, 1]``; or, with a tokenizer, token ids ``[N, L]`` and an optional mask."""
    if card.text is not None and card.text.tokenizer is not None:
        length = card.text.max_length
        if len(inputs) not in (1, 2) or any(p.type not in _INT_TYPES or len(p.shape) != 2 for p in inputs):
            _mismatch(
                "a token-id text model takes token ids [N, L] (int64 or int32) and optionally an attention mask "
                "[N, L], in that order",
                "card.text.tokenizer",
            )
        for port in inputs:
            if isinstance(port.shape[1], int) and port.shape[1] != length:
                _mismatch(
                    f"input {port.name!r} takes {port.shape[1]} tokens, the card's max_length is {length}",
                    "card.text.max_length",
                )
        return
    if len(inputs) != 1 or inputs[0].type != "tensor(string)" or len(inputs[0].shape) not in (1, 2):
        _mismatch("a text model takes one string tensor [N] or [N, 1]", "card.input_kind")
    shape = inputs[0].shape
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] != 1:
        _mismatch(f"input {inputs[0].name!r} must be [N, 1], not {list(shape)}", "card.input_kind")


def _explained_output(outputs: tuple[Port, ...], card: ModelCard) -> Port:
    if card.output is not None:
        chosen = [p for p in outputs if p.name == card.output]
        if not chosen:
            _mismatch(f"the model has no output {card.output!r}", "card.output")
        port = chosen[0]
    else:
        candidates = [p for p in outputs if p.type == "tensor(float)" or p.type.startswith("seq(map(")]
        if card.task == "classification":
            # skl2onnx puts the label first and the probabilities second.
            candidates = [p for p in candidates if not (p.type == "tensor(float)" and len(p.shape) == 1)]
        if not candidates:
            _mismatch("no output holds float scores; name one in card.output", "card.output")
        port = candidates[-1] if card.task == "classification" else candidates[0]
    if port.type.startswith("seq(map(") and card.task == "regression":
        _mismatch(f"output {port.name!r} is a sequence of maps; a regressor needs a tensor", "card.output")
    if card.task == "classification" and port.type.startswith("tensor") and len(port.shape) == 2:
        width = port.shape[1]
        if isinstance(width, int) and width != len(card.class_names):
            _mismatch(
                f"output {port.name!r} has {width} columns, the card lists {len(card.class_names)} classes",
                "card.class_names",
            )
    if not (port.type.startswith("seq(map(") or port.type in NUMERIC_TYPES):
        _mismatch(f"output {port.name!r} of type {port.type} holds no numbers", "card.output")
    return port


def _mismatch(detail: str, field: str) -> None:
    raise ModelRejected(detail, code="card_mismatch", field=field)


def _port(value: onnx.ValueInfoProto) -> Port:
    shape: list[int | str | None] = []
    tensor_type = value.type.tensor_type
    if value.type.HasField("tensor_type"):
        for dim in tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                shape.append(dim.dim_param or None)
    return Port(value.name, _type_string(value.type), tuple(shape))


def _type_string(t: onnx.TypeProto) -> str:
    if t.HasField("tensor_type"):
        elem = onnx.helper.tensor_dtype_to_string(t.tensor_type.elem_type).removeprefix("TensorProto.").lower()
        return f"tensor({elem})"
    if t.HasField("sequence_type"):
        return f"seq({_type_string(t.sequence_type.elem_type)})"
    if t.HasField("map_type"):
        key = onnx.helper.tensor_dtype_to_string(t.map_type.key_type).removeprefix("TensorProto.").lower()
        return f"map({key},{_type_string(t.map_type.value_type)})"
    return "unknown"


def _graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    yield from _subgraph_walk(model.graph)
    # onnxruntime ignores training_info for inference, but its graphs are still in the file we store and serve.
    for info in model.training_info:
        yield from _subgraph_walk(info.initialization)
        yield from _subgraph_walk(info.algorithm)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from _subgraph_walk(attr.g)
                for sub in attr.graphs:
                    yield from _subgraph_walk(sub)


def _subgraph_walk(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _subgraph_walk(attr.g)
            for sub in attr.graphs:
                yield from _subgraph_walk(sub)


def _nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    for graph in _graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from _attr_tensors(node)
    for function in model.functions:
        for node in function.node:
            yield from _attr_tensors(node)


def _attr_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices

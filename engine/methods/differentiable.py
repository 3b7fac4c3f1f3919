"""Which ONNX graphs gradient methods can use, decided from the graph alone (no torch).

Gradient methods (``grad_cam``, ``saliency``, ``integrated_gradients``,
``smoothgrad``) need the explained output to be a differentiable function of
a float input. This module answers that before anyone asks, so the model's
method list can say which methods apply, and so a request for a tree model's
gradients is refused with the operator to blame instead of failing in torch.

Only the part of the graph the explained output depends on counts: a
classifier exported with an ``ArgMax`` label output next to its
probabilities is still differentiable through the probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

# Piecewise-constant or discrete operators: their gradient is zero or undefined almost everywhere,
# so a "gradient" through them explains nothing.
NON_DIFFERENTIABLE = frozenset(
    {
        "ArgMax",
        "ArgMin",
        "TopK",
        "Round",
        "Floor",
        "Ceil",
        "Sign",
        "Equal",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Not",
        "And",
        "Or",
        "Xor",
        "NonZero",
        "StringNormalizer",
        "TfIdfVectorizer",
        "RegexFullMatch",
        "StringConcat",
        "StringSplit",
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
    }
)
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


@dataclass(frozen=True)
class Verdict:
    """Whether gradients of one output can be taken.

    Attributes:
        ok: True when every operator on the output's path is differentiable.
        reason: Why not, naming the operator or input, when ``ok`` is false.
        operator: The offending operator type (``domain:op``), when one is to blame.
    """

    ok: bool
    reason: str = ""
    operator: str | None = None


def output_subgraph(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The model cut down to the nodes, initializers and inputs ``output`` depends on.

    Raises:
        KeyError: ``output`` is not an output of the graph.
    """
    graph = model.graph
    outputs = {o.name: o for o in graph.output}
    if output not in outputs:
        raise KeyError(output)
    needed = {output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    kept.reverse()
    inputs = [i for i in graph.input if i.name in needed]
    initializers = [t for t in graph.initializer if t.name in needed]
    sub = onnx.helper.make_graph(kept, graph.name, inputs, [outputs[output]], initializer=initializers)
    out = onnx.helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return out


def check(model: onnx.ModelProto, output: str) -> Verdict:
    """Say whether ``output`` is a differentiable function of the graph's float inputs."""
    try:
        sub = output_subgraph(model, output)
    except KeyError:
        return Verdict(False, f"the graph has no output {output!r}")
    initializer_names = {t.name for t in sub.graph.initializer}
    for graph_input in sub.graph.input:
        if graph_input.name in initializer_names:
            continue
        elem = graph_input.type.tensor_type.elem_type
        if elem not in _FLOAT_TYPES:
            kind = onnx.TensorProto.DataType.Name(elem).lower()
            return Verdict(False, f"input {graph_input.name!r} is a {kind} tensor, which has no gradient")
    for node in sub.graph.node:
        domain = node.domain or "ai.onnx"
        if domain not in ("ai.onnx", ""):
            return Verdict(
                False,
                f"operator {domain}:{node.op_type} ({node.name or 'unnamed'}) cannot be differentiated",
                f"{domain}:{node.op_type}",
            )
        if node.op_type in NON_DIFFERENTIABLE:
            return Verdict(
                False,
                f"operator {node.op_type} ({node.name or 'unnamed'}) has no useful gradient",
                node.op_type,
            )
    return Verdict(True)


def conv_layers(model: onnx.ModelProto, output: str) -> list[str]:
    """Names of the 2-D convolutions ``output`` depends on, in graph order (Grad-CAM's layers).

    A node without a name is called ``Conv_<i>`` (its index among the convolutions).
    """
    try:
        sub = output_subgraph(model, output)
    except KeyError:
        return []
    weights = {t.name: len(t.dims) for t in sub.graph.initializer}
    names: list[str] = []
    for node in sub.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and weights.get(node.input[1]) == 4:
            names.append(node.name or f"Conv_{len(names)}")
    return names


@dataclass(frozen=True)
class EmbeddingVerdict:
    """Whether integrated gradients on a token model's embedding lookup can be taken.

    Attributes:
        ok: True when the output is a differentiable function of the embeddings.
        reason: Why not, when ``ok`` is false.
        gather_index: Position of the embedding ``Gather`` among the subgraph's ``Gather`` nodes.
        ids_input: The token-id input's name.
        operator: The offending operator, when one is to blame.
    """

    ok: bool
    reason: str = ""
    gather_index: int = -1
    ids_input: str = ""
    operator: str | None = None


def check_embedding(model: onnx.ModelProto, output: str) -> EmbeddingVerdict:
    """Find the embedding lookup of a token-id model and check everything downstream of it is differentiable.

    The embedding is the first ``Gather`` whose table is a float initializer
    and whose indices are an integer graph input. Operators that only read
    the ids (padding masks: ``Equal``, ``Not``, ``Cast``) are fine; every
    operator that depends on the embeddings must be differentiable.
    """
    try:
        sub = output_subgraph(model, output)
    except KeyError:
        return EmbeddingVerdict(False, f"the graph has no output {output!r}")
    floats = {t.name for t in sub.graph.initializer if t.data_type in _FLOAT_TYPES}
    int_inputs = {i.name for i in sub.graph.input if i.type.tensor_type.elem_type not in _FLOAT_TYPES}
    gathers = [n for n in sub.graph.node if n.op_type == "Gather"]
    found = next(
        (i for i, n in enumerate(gathers) if n.input[0] in floats and n.input[1] in int_inputs and not n.domain),
        None,
    )
    if found is None:
        return EmbeddingVerdict(False, "no embedding lookup (a Gather from a float table by a token-id input)")
    tainted = set(gathers[found].output)
    for node in sub.graph.node:
        if not any(name in tainted for name in node.input):
            continue
        if node.domain not in ("", "ai.onnx") or node.op_type in NON_DIFFERENTIABLE:
            operator = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
            return EmbeddingVerdict(
                False,
                f"operator {operator} ({node.name or 'unnamed'}) after the embedding has no useful gradient",
                operator=operator,
            )
        tainted.update(node.output)
    return EmbeddingVerdict(True, gather_index=found, ids_input=gathers[found].input[1])

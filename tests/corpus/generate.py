"""Generate the hostile model corpus: ONNX files an attacker (or a broken exporter) might upload.

Each case is a file ``<name>.onnx`` and an entry of ``manifest.json``: the card features it is sent with and
the ``code`` the upload must be refused with (422). ``tests/corpus/test_corpus.py`` registers every file
against the API. Run it by hand to get the files (e.g. to try them on a live server)::

    python -m tests.corpus.generate var/corpus

The builders are small (kilobytes): a "huge" tensor or input is huge by its declared dims or by what it asks of
the runtime, never by its bytes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from tests import builders

FEATURES = ["a", "b"]


@dataclass(frozen=True)
class Case:
    """One hostile file: how to build its bytes, the code it must get, the card's features."""

    build: Callable[[], bytes]
    code: str
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    why: str = ""


def _linear(*extra: onnx.NodeProto) -> onnx.ModelProto:
    """The harmless base: y = x·w for x [N, 2]; ``extra`` nodes go first."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [1.0, 2.0])
    return builders.helper_model([*extra, helper.make_node("MatMul", ["x", "w"], ["y"])], initializers=[w])


_external = builders.external_tensor


def _bytes(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def external_initializer() -> bytes:
    model = _linear()
    model.graph.initializer[0].CopyFrom(_external("w", dims=(2, 1)))
    return _bytes(model)


def external_in_subgraph() -> bytes:
    """An If whose then-branch holds a Constant with external data."""
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=_external("c"))],
        "then",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    other = helper.make_graph(
        [helper.make_node("Constant", [], ["d"], value=helper.make_tensor("d", TensorProto.FLOAT, [1], [0.0]))],
        "else",
        [],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [1])],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    nodes = [helper.make_node("If", ["cond"], ["k"], then_branch=branch, else_branch=other)]
    model = _linear(*nodes)
    model.graph.initializer.append(cond)
    return _bytes(model)


def external_in_function() -> bytes:
    """A local function whose body holds a Constant with external data."""
    function = helper.make_function(
        "corpus.fn",
        "Hidden",
        [],
        ["c"],
        [helper.make_node("Constant", [], ["c"], value=_external("c"))],
        [helper.make_opsetid("", 17)],
    )
    model = _linear(helper.make_node("Hidden", [], ["k"], domain="corpus.fn"))
    model.functions.append(function)
    model.opset_import.append(helper.make_opsetid("corpus.fn", 1))
    return _bytes(model)


def external_in_training_info() -> bytes:
    model = _linear()
    info = model.training_info.add()
    info.initialization.CopyFrom(
        helper.make_graph(
            [helper.make_node("Constant", [], ["c"], value=_external("c"))],
            "init",
            [],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
        )
    )
    return _bytes(model)


def external_sparse_indices() -> bytes:
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    sparse = helper.make_sparse_tensor(values, _external("i", TensorProto.INT64, (1,)), [2, 1])
    return _bytes(_linear(helper.make_node("Constant", [], ["s"], sparse_value=sparse)))


def sparse_indices_out_of_range() -> bytes:
    """A sparse initializer of 2 × 1 values whose index points at element 10^6."""
    values = helper.make_tensor("w_values", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("w_indices", TensorProto.INT64, [1], [1_000_000])
    model = _linear()
    del model.graph.initializer[:]
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2, 1]))
    model.graph.sparse_initializer[0].values.name = "w"
    return _bytes(model)


def sparse_attribute_out_of_range() -> bytes:
    values = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("i", TensorProto.INT64, [1], [99])
    sparse = helper.make_sparse_tensor(values, indices, [2, 1])
    return _bytes(_linear(helper.make_node("Constant", [], ["s"], sparse_value=sparse)))


def custom_domain_op() -> bytes:
    model = _linear(helper.make_node("Exec", ["x"], ["k"], domain="evil.ops"))
    model.opset_import.append(helper.make_opsetid("evil.ops", 1))
    return _bytes(model)


def python_op() -> bytes:
    """onnxruntime-extensions' PyOp domain: a custom op that would run Python."""
    model = _linear(helper.make_node("PyOp", ["x"], ["k"], domain="ai.onnx.contrib"))
    model.opset_import.append(helper.make_opsetid("ai.onnx.contrib", 1))
    return _bytes(model)


def unused_custom_opset() -> bytes:
    model = _linear()
    model.opset_import.append(helper.make_opsetid("evil.ops", 1))
    return _bytes(model)


def truncated_protobuf() -> bytes:
    data = _bytes(_linear())
    return data[: len(data) // 2]


def random_bytes() -> bytes:
    return bytes((i * 197 + 13) % 256 for i in range(4096))


def empty_graph() -> bytes:
    return _bytes(helper.make_model(helper.make_graph([], "empty", [], [])))


def huge_dims_initializer() -> bytes:
    """A weight declared [2^40, 1] with two floats of data: checkers that multiply dims must not overflow."""
    model = _linear()
    model.graph.initializer[0].dims[:] = [2**40, 1]
    return _bytes(model)


def int64_overflow_dims() -> bytes:
    model = _linear()
    model.graph.initializer[0].dims[:] = [2**62, 2**62]
    return _bytes(model)


def undefined_input() -> bytes:
    return _bytes(_linear(helper.make_node("Relu", ["nowhere"], ["k"])))


def future_opset() -> bytes:
    model = _linear()
    model.opset_import[0].version = 999
    return _bytes(model)


def input_shaped_constant_of_shape() -> bytes:
    """The issue's bomb: ConstantOfShape sized max(x)·1e9; the trial's boundary rows set it off."""
    return _bytes(builders.input_shaped_model(scale=1e9))


def boundary_spin() -> bytes:
    """A Loop of 10^12 trips when max(x) is 1e6, the trial's boundary value: caught by the probe's timeout."""
    return _bytes(builders.spin_model(trigger=1e6))


def nested_subgraphs() -> bytes:
    """If inside If, 30 deep (protobuf refuses ~33: 3 message levels each, 100 at most); the walkers find the leaf."""
    inner = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=_external("c"))],
        "leaf",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    leaf = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT, [1], [0.0]))],
        "plain",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    for depth in range(30):  # the hidden branch goes one way only: the file stays small (not 2^60 copies)
        node = helper.make_node("If", ["cond"], ["c"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph(
            [node], f"level{depth}", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])]
        )
    model = _linear(*inner.node)
    model.graph.initializer.append(cond)
    return _bytes(model)


CASES: dict[str, Case] = {
    "external_initializer": Case(external_initializer, "external_data_not_allowed"),
    "external_in_subgraph": Case(external_in_subgraph, "external_data_not_allowed"),
    "external_in_function": Case(external_in_function, "external_data_not_allowed"),
    "external_in_training_info": Case(external_in_training_info, "external_data_not_allowed"),
    "external_sparse_indices": Case(external_sparse_indices, "external_data_not_allowed"),
    "nested_subgraphs": Case(nested_subgraphs, "external_data_not_allowed"),
    "sparse_indices_out_of_range": Case(sparse_indices_out_of_range, "invalid_model"),
    "sparse_attribute_out_of_range": Case(sparse_attribute_out_of_range, "invalid_model"),
    "custom_domain_op": Case(custom_domain_op, "unsupported_op_domain"),
    "python_op": Case(python_op, "unsupported_op_domain"),
    "unused_custom_opset": Case(unused_custom_opset, "unsupported_op_domain"),
    "truncated_protobuf": Case(truncated_protobuf, "not_onnx"),
    "random_bytes": Case(random_bytes, "not_onnx"),
    "empty_graph": Case(empty_graph, "not_onnx"),
    "huge_dims_initializer": Case(huge_dims_initializer, "invalid_model"),
    "int64_overflow_dims": Case(int64_overflow_dims, "invalid_model"),
    "undefined_input": Case(undefined_input, "invalid_model"),
    "future_opset": Case(future_opset, "invalid_model"),
    "input_shaped_constant_of_shape": Case(input_shaped_constant_of_shape, "invalid_model", ["a"]),
    "boundary_spin": Case(boundary_spin, "invalid_model", ["a"]),
}
"""Every hostile file, by name."""


def generate(directory: Path) -> dict[str, dict[str, object]]:
    """Write every case's file and ``manifest.json`` into ``directory``; return the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, object]] = {}
    for name, case in CASES.items():
        (directory / f"{name}.onnx").write_bytes(case.build())
        manifest[name] = {"file": f"{name}.onnx", "code": case.code, "features": case.features}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("var/corpus")
    print(f"wrote {len(generate(target))} hostile models and manifest.json to {target}")

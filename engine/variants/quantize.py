"""Quantized variants: int8 (dynamic or static) for the CPU, fp16 for GPUs.

:func:`build_variant` makes them with onnxruntime's own tools; whether one is
good enough to serve is :mod:`engine.variants.fidelity`'s call. Measured here:

- skl2onnx graphs (``ai.onnx.ml`` nodes such as ``Scaler``) make both
  quantizers raise without ``DefaultTensorType``; after ``quant_pre_process``
  static int8 leaves every activation float (0.27–0.5× fp32 speed), while
  torch graphs want it: it runs only on graphs without ``ai.onnx.ml`` nodes.
- Dynamic int8 on ``Conv`` (``ConvInteger``) is ~10× slower than fp32.
- Static int8 clips activations to the calibration range: rare rows beyond
  it erred by 3–7 % of the output range (MLP regressors, 100–300 rows).
  Adding the rows stretched 1.25× from their mean (0.054 → 0.009; 1.5× and
  2× mostly worse) and a float last layer (0.029 → 0.006, no cost) fix that.

Example::

    variant = build_variant(model_bytes, "int8_static", background_rows, Path("/tmp"))
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import ModelProto, TensorProto, helper, numpy_helper
from onnxruntime import quantization as oq

from engine.errors import ExplanationFailed, InvalidRequest, ModelRejected
from engine.models.card import QUANTIZED_KINDS
from engine.runtime.hardware import CpuProfile, host_cpu
from engine.runtime.sessions import session_options

WEIGHTED_OPS = frozenset({"MatMul", "Gemm", "Conv"})
DYNAMIC_OPS = ["MatMul", "Gemm"]  # never Conv: ConvInteger is ~10x slower than fp32
CALIBRATION_MAX_ROWS = 1000
CALIBRATION_BATCH = 64
CALIBRATION_STRETCH = 1.25
_SAME_SHAPE = frozenset({"Cast", "Relu", "Scaler", "Sigmoid", "Tanh", "Identity", "LeakyRelu", "Clip", "Normalizer"})
# Both quantizers raise on tensors onnx cannot type (all past ai.onnx.ml nodes) without it.
_EXTRA = {"DefaultTensorType": TensorProto.FLOAT}


def has_quantizable_ops(model_bytes: bytes) -> bool:
    """Return whether a ``MatMul``/``Gemm``/``Conv`` has constant weights (tree ensembles: none).

    Raises:
        ModelRejected: The bytes are not an ONNX model.
    """
    return bool(_weighted_nodes(_load(model_bytes)))


def build_variant(
    model_bytes: bytes, kind: str, calibration: NDArray[Any] | None, workdir: Path, cpu: CpuProfile | None = None
) -> bytes:
    """Build a quantized variant of an fp32 model.

    Args:
        model_bytes: The serialized fp32 ONNX model.
        kind: One of :data:`QUANTIZED_KINDS` (pruned kinds are :mod:`engine.variants.prune`'s).
        calibration: Representative float32 rows (batch first) for the model's single
            input; background data will do. Required by ``int8_static`` (which uses
            up to :data:`CALIBRATION_MAX_ROWS`); the others only smoke-test with them.
        workdir: Where a scratch directory for the quantizers' files is made and removed.
        cpu: The CPU the variant will run on (default: this host); x86 without VNNI
            gets 7-bit int8 weights (see :mod:`engine.runtime.hardware`).

    Returns:
        The serialized variant, verified to run in onnxruntime on the CPU.

    Raises:
        InvalidRequest: ``invalid_variant`` (unknown kind), ``nothing_to_quantize``
            (no weighted ops), ``invalid_calibration`` (static rows missing or misfit).
        ModelRejected: The bytes are not an ONNX model.
        ExplanationFailed: ``quantization_failed`` when the tools crash or their output does not run.
    """
    if kind not in QUANTIZED_KINDS:
        raise InvalidRequest(
            f"unknown quantization {kind!r}, not in {QUANTIZED_KINDS}", code="invalid_variant", field="kind"
        )
    model = _load(model_bytes)
    if not _weighted_nodes(model):
        raise InvalidRequest("no MatMul, Gemm or Conv with constant weights to quantize", code="nothing_to_quantize")
    rows = _calibration_rows(model, calibration, required=kind == "int8_static")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="variant-") as tmp:
        try:
            out = _build(model, kind, rows, Path(tmp), (cpu or host_cpu()).reduce_range)
        except Exception as exc:  # the quantizers raise anything from assert to onnx errors
            raise ExplanationFailed(f"{kind} quantization failed: {exc}", code="quantization_failed") from exc
    _verify(out, kind, rows)
    return out


def _build(model: ModelProto, kind: str, rows: NDArray[np.float32] | None, tmp: Path, reduce_range: bool) -> bytes:
    """Run the quantizer for ``kind`` in ``tmp`` and return the variant's bytes."""
    if kind == "fp16":
        return bytes(_float16(model).SerializeToString())
    source = tmp / "fp32.onnx"
    onnx.save_model(model, source)
    if not any(node.domain == "ai.onnx.ml" for node in model.graph.node):  # see the module docstring
        prepared = tmp / "prepared.onnx"
        # Symbolic shapes need sympy, not an onnxruntime dependency; onnx's own inference serves.
        oq.quant_pre_process(source, prepared, skip_symbolic_shape=importlib.util.find_spec("sympy") is None)
        source = prepared
    target = tmp / f"{kind}.onnx"
    if kind == "int8_dynamic":
        oq.quantize_dynamic(
            source,
            target,
            op_types_to_quantize=DYNAMIC_OPS,
            weight_type=oq.QuantType.QInt8,
            reduce_range=reduce_range,
            extra_options=_EXTRA,
        )
    else:
        assert rows is not None  # _calibration_rows enforced it
        graph = _named(_fuse_gemm(onnx.load_model(source)))
        onnx.save_model(graph, source)
        feed = _feeds(graph)[0]  # a fixed batch size (dim_value > 0) must be honoured
        oq.quantize_static(
            source,
            target,
            _RowReader(feed.name, _stretched(rows), feed.type.tensor_type.shape.dim[0].dim_value or CALIBRATION_BATCH),
            quant_format=oq.QuantFormat.QDQ,
            activation_type=oq.QuantType.QInt8,
            weight_type=oq.QuantType.QInt8,
            # Per-channel scales matter for Conv/Gemm filters of very different
            # magnitudes; plain MatMul graphs measured the same either way.
            per_channel=any(n.op_type in ("Conv", "Gemm") for n in graph.graph.node),
            calibrate_method=oq.CalibrationMethod.MinMax,
            reduce_range=reduce_range,
            nodes_to_exclude=sorted(_output_tail(graph)),
            extra_options=_EXTRA,
        )
    return target.read_bytes()


class _RowReader(oq.CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration rows to ``quantize_static`` in batches; ``None`` when done."""

    def __init__(self, name: str, rows: NDArray[np.float32], batch: int) -> None:
        self._batches = iter([{name: rows[i : i + batch]} for i in range(0, len(rows), batch)])

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        """Return the next batch of the reader protocol."""
        return next(self._batches, None)


def _stretched(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Return the rows plus a copy pushed :data:`CALIBRATION_STRETCH` times further from their mean."""
    mean = rows.mean(axis=0, dtype=np.float64)
    return np.concatenate([rows, (mean + CALIBRATION_STRETCH * (rows - mean)).astype(np.float32)])


def _float16(model: ModelProto) -> ModelProto:
    """Convert to float16, keeping float32 inputs and outputs."""
    # onnxruntime.transformers' __init__ appends its folder to sys.path; undo it, lest it shadow ours.
    saved = list(sys.path)
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    finally:
        sys.path[:] = saved
    # Its default op block list keeps every ai.onnx.ml op (Scaler, ZipMap, trees) in float32.
    return cast(ModelProto, convert_float_to_float16(model, keep_io_types=True))


def _verify(variant: bytes, kind: str, rows: NDArray[np.float32] | None) -> None:
    """Load the variant on the CPU and run it once when rows are at hand."""
    try:
        session = ort.InferenceSession(variant, session_options(1), providers=["CPUExecutionProvider"])
        if rows is not None and len(session.get_inputs()) == 1:
            session.run(None, {session.get_inputs()[0].name: rows[:1]})
    except Exception as exc:  # onnxruntime's errors are not exported classes
        raise ExplanationFailed(f"the {kind} variant does not run: {exc}", code="quantization_failed") from exc


def _calibration_rows(
    model: ModelProto, calibration: NDArray[Any] | None, *, required: bool
) -> NDArray[np.float32] | None:
    """Check calibration rows against the model's input and thin them to the cap."""
    inputs = _feeds(model)
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    rows = np.asarray(np.nan if calibration is None else calibration, dtype=np.float32)
    fits = (
        rows.ndim == len(dims) > 0
        and rows.shape[0] > 0
        and all(d in (0, n) for d, n in zip(dims[1:], rows.shape[1:], strict=True))  # 0: any size
        and bool(np.isfinite(rows).all())
    )
    if calibration is None or len(inputs) != 1 or not fits:
        if not required:
            return None  # only the smoke test would have used them
        got = "none" if calibration is None else f"shape {rows.shape}"
        detail = f"int8_static needs finite rows for one input of shape {dims} (0 = any); got {got}"
        raise InvalidRequest(detail, code="invalid_calibration", field="calibration")
    step = -(-len(rows) // CALIBRATION_MAX_ROWS)  # ceil: evenly thin, deterministic
    return np.ascontiguousarray(rows[::step])


def _load(model_bytes: bytes) -> ModelProto:
    """Parse ONNX bytes."""
    try:
        return onnx.load_model_from_string(model_bytes)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelRejected(f"not an ONNX model: {exc}", code="invalid_model") from exc


def _weighted_nodes(model: ModelProto) -> list[onnx.NodeProto]:
    """Return the MatMul/Gemm/Conv nodes with a constant weight (second input; either, for MatMul)."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        node
        for node in model.graph.node
        if node.op_type in WEIGHTED_OPS
        and node.domain in ("", "ai.onnx")
        and any(name in constants for name in (node.input[:2] if node.op_type == "MatMul" else node.input[1:2]))
    ]


def _feeds(model: ModelProto) -> list[onnx.ValueInfoProto]:
    """Return the graph inputs that are fed at run time (not initializers)."""
    constants = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in constants]


def _named(model: ModelProto) -> ModelProto:
    """Give every node a unique name so nodes can be excluded from quantization."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}_onnxplain"
        seen.add(node.name)
    return model


def _fuse_gemm(model: ModelProto) -> ModelProto:
    """Rewrite 2-D ``MatMul`` + constant ``Add`` (skl2onnx's dense layer) as ``Gemm``; flatten ``(1, N)`` biases.

    Quantized, the Add stays float between a dequantize and a requantize; a Gemm becomes one
    QGemm with an int32 bias (100-feature MLP regressor: 1.54× → 1.82× fp32 batched). Ranks
    are tracked through :data:`_SAME_SHAPE` ops, as onnx infers no shapes past ``ai.onnx.ml``
    nodes. onnxruntime's per-channel bias check crashes on ``(1, N)`` Gemm biases.
    """
    graph, nodes = model.graph, list(model.graph.node)
    consts = {t.name: t for t in graph.initializer}
    users = Counter(name for node in nodes for name in node.input) + Counter(o.name for o in graph.output)
    consumer = {name: j for j, node in reversed(list(enumerate(nodes))) for name in node.input}  # the first
    rank = {i.name: len(i.type.tensor_type.shape.dim) for i in graph.input if i.type.tensor_type.HasField("shape")}
    kept, dropped = [], set()
    for index, node in enumerate(nodes):
        first = node.input[0] if node.input else ""
        if index in dropped:
            continue
        if node.op_type in _SAME_SHAPE and first in rank:
            rank[node.output[0]] = rank[first]
        weight = consts.get(node.input[1]) if node.op_type == "MatMul" else None
        if node.op_type == "Gemm" or (weight is not None and len(weight.dims) == 2 and rank.get(first) == 2):
            rank[node.output[0]] = 2
        add = consumer.get(node.output[0], 0) if weight is not None else 0
        bias = next((n for n in nodes[add].input if n != node.output[0]), "") if add else ""
        if (
            weight is None
            or rank.get(node.output[0]) != 2
            or nodes[add].op_type != "Add"
            or users[node.output[0]] != 1
            or bias not in consts
            or tuple(consts[bias].dims) not in ((weight.dims[1],), (1, weight.dims[1]))  # row-wise, as Gemm's C
        ):
            kept.append(node)
            continue
        kept.append(helper.make_node("Gemm", [first, weight.name, bias], list(nodes[add].output), name=node.name))
        rank[nodes[add].output[0]] = 2
        dropped.add(add)
    for index, node in enumerate(kept):
        row = consts.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) == 3 else None
        if row is not None and len(row.dims) == 2 and row.dims[0] == 1:
            flat = numpy_helper.from_array(numpy_helper.to_array(row).reshape(-1), f"{row.name}_{index}_flat")
            graph.initializer.append(flat)
            node.input[2] = flat.name
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {v.name for v in [*graph.output, *graph.input]}
    for tensor in [t for t in graph.initializer if t.name in set(consts) - used]:
        graph.initializer.remove(tensor)  # biases replaced by flat copies
    return model


def _output_tail(model: ModelProto) -> set[str]:
    """Return the last weighted node and all downstream of it, to keep float in static int8.

    That is a sliver of the compute where clipping to the calibration range
    hits predictions directly. A one-layer model keeps its layer quantized.
    """
    weighted = _weighted_nodes(model)
    if len(weighted) < 2:
        return set()
    tail, produced = {weighted[-1].name}, set(weighted[-1].output)
    # graph.node is topologically sorted, so one forward pass finds all descendants.
    for node in model.graph.node:
        if produced.intersection(node.input):
            tail.add(node.name)
            produced.update(node.output)
    return tail

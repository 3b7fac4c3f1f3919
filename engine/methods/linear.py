"""Exact attributions for linear models, in closed form, in margin space.

For an affine score ``s(x) = W x + b`` the interventional Shapley values are
``phi_i = W_i (x_i − mean_bg_i)``, the base is ``s(mean_bg)`` and the output
``s(x)``. Two ways to find ``W`` and ``b``:

* the graph holds an ``ai.onnx.ml`` ``LinearClassifier``/``LinearRegressor``
  (optionally after ``Scaler``s, whose affine maps are composed): ``W`` is
  read from it and explained *before* the post-transform (sigmoid/softmax),
  then checked against ``task.f`` through that post-transform;
* otherwise the model output itself must be affine (a regression built of
  MatMul/Add/Gemm): ``W`` is fitted by least squares through ``task.f`` and
  the fit must reproduce the outputs.

Binary convention: margins are per-class log-odds, class 1 ``+s`` and class 0
``−s``. skl2onnx already writes the two rows ``(−w, w)``; a single-row
binary ``LinearClassifier`` is expanded the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background

_AFFINE_OPS = {"MatMul", "Gemm", "Add", "Sub", "Mul", "Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_CONST_OPERAND_OPS = {"MatMul", "Gemm", "Mul"}
_AFTER_LINEAR_OPS = {"Normalizer", "ZipMap", "Cast", "Identity"}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}


@dataclass(frozen=True)
class LinearGraph:
    """The affine score of a linear ONNX model, in raw input space.

    Attributes:
        weights: ``(k, d)`` one row per output column.
        intercepts: ``(k,)``.
        post_transform: The node's ``post_transform`` (``NONE``, ``LOGISTIC``, ``SOFTMAX``…).
        normalizer: The ``norm`` of a following ``Normalizer``, if any.
        one_row_binary: A binary classifier stored with one coefficient row.
    """

    weights: FloatArray
    intercepts: FloatArray
    post_transform: str
    normalizer: str | None
    one_row_binary: bool


def read_linear_graph(onnx_bytes: bytes) -> LinearGraph | None:
    """Read the affine score of a ``Scaler* → Linear{Classifier,Regressor}`` graph, or ``None``."""
    graph = onnx.load_from_string(onnx_bytes).graph
    constants = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1 or not inputs[0].type.tensor_type.shape.dim:
        return None
    d = inputs[0].type.tensor_type.shape.dim[-1].dim_value
    if d <= 0:
        return None
    chain: dict[str, tuple[FloatArray, FloatArray]] = {inputs[0].name: (np.eye(d), np.zeros(d))}
    after: set[str] = set()
    found: LinearGraph | None = None
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        source = next((chain[t] for t in node.input if t in chain), None)
        if source is not None and node.op_type == "Scaler":
            scale, offset = np.asarray(attrs["scale"], float), np.asarray(attrs.get("offset", [0.0]), float)
            matrix, shift = source
            chain[node.output[0]] = (scale[:, None] * matrix, scale * (shift - offset))
        elif source is not None and node.op_type in ("Cast", "Identity"):
            if node.op_type == "Cast" and attrs["to"] not in _FLOAT_TYPES:
                return None
            chain[node.output[0]] = source
        elif source is not None and node.op_type in ("LinearClassifier", "LinearRegressor") and found is None:
            found = _read_linear_node(node.op_type, attrs, *source)
            if found is None:
                return None
            after.update(node.output)
        elif source is None and node.op_type in _AFTER_LINEAR_OPS and any(t in after for t in node.input):
            if node.op_type == "Normalizer" and found is not None:
                found = replace(found, normalizer=str(attrs["norm"], "ascii"))
            after.update(node.output)
        elif node.op_type != "Constant":
            return None
    return found


def _read_linear_node(op_type: str, attrs: dict[str, Any], matrix: FloatArray, shift: FloatArray) -> LinearGraph | None:
    """Compose a ``Linear*`` node with the affine map ``matrix · x + shift`` that feeds it."""
    coefficients = np.asarray(attrs["coefficients"], dtype=np.float64)
    rows = coefficients.size // matrix.shape[0]
    if rows == 0 or rows * matrix.shape[0] != coefficients.size:
        return None
    w = coefficients.reshape(rows, matrix.shape[0])
    b = np.asarray(attrs.get("intercepts", np.zeros(rows)), dtype=np.float64)
    one_row_binary = False
    if op_type == "LinearClassifier":
        labels = attrs.get("classlabels_ints") or attrs.get("classlabels_strings") or []
        if rows == 1 and len(labels) == 2:
            w, b, one_row_binary = np.vstack([-w, w]), np.concatenate([-b, b]), True
        elif rows != len(labels):
            return None
    post = attrs.get("post_transform", b"NONE")
    post_transform = str(post, "ascii") if isinstance(post, bytes) else str(post)
    return LinearGraph(w @ matrix, w @ shift + b, post_transform, None, one_row_binary)


def _model_output(graph: LinearGraph, margins: FloatArray) -> FloatArray | None:
    """Reproduce onnxruntime's output from the margins, or ``None`` for an unsupported transform."""
    if graph.one_row_binary:
        # onnxruntime writes (1 − p, p); only the class-1 column is checked.
        s = margins[:, 1:]
        return np.hstack([np.zeros_like(s), 1 / (1 + np.exp(-s)) if graph.post_transform == "LOGISTIC" else s])
    if graph.post_transform == "NONE":
        out = margins
    elif graph.post_transform == "LOGISTIC":
        out = 1 / (1 + np.exp(-margins))
    elif graph.post_transform in ("SOFTMAX", "SOFTMAX_ZERO"):
        keep = margins != 0 if graph.post_transform == "SOFTMAX_ZERO" else np.ones_like(margins, dtype=bool)
        e = np.where(keep, np.exp(margins - margins.max(axis=1, keepdims=True)), 0.0)
        out = e / e.sum(axis=1, keepdims=True)
    else:
        return None
    norms = {"L1": np.abs(out).sum(1), "L2": np.sqrt((out**2).sum(1)), "MAX": out.max(1)}
    return out / norms[graph.normalizer][:, None] if graph.normalizer in norms else out


def is_linear(onnx_bytes: bytes) -> bool:
    """Tell whether ``linear`` applies: a ``Linear*`` graph, or one made only of affine ops.

    The op check is structural (each MatMul/Gemm/Mul has a constant operand);
    :class:`Linear` still verifies the fit numerically before answering.
    """
    try:
        if read_linear_graph(onnx_bytes) is not None:
            return True
        graph = onnx.load_from_string(onnx_bytes).graph
    except Exception:
        return False
    constants = {t.name for t in graph.initializer} | {
        out for node in graph.node if node.op_type == "Constant" for out in node.output
    }
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type not in _AFFINE_OPS or node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type in _CONST_OPERAND_OPS and not any(t in constants for t in node.input[:2]):
            return False
    return bool(graph.node)


def _not_applicable(detail: str) -> InvalidRequest:
    return InvalidRequest(
        f"linear does not apply: {detail}; use exact or kernel_shap", code="method_not_applicable", field="method"
    )


def _fit_affine(task: ExplainTask) -> tuple[FloatArray, FloatArray]:
    """Fit ``f(z) = W z + b`` by least squares; raise unless the fit reproduces ``f``."""
    mean = task.background.mean(axis=0)
    step = np.where(task.background.std(axis=0) > 0, task.background.std(axis=0), 1.0)
    # The coordinate steps make the design full rank whatever the background.
    points = np.vstack([task.background, task.X, mean + np.diag(step)])
    y = np.asarray(task.f(points), dtype=np.float64)
    design = np.hstack([points, np.ones((len(points), 1))])
    coef = np.linalg.lstsq(design, y, rcond=None)[0]
    residual = np.abs(design @ coef - y).max()
    if residual > 1e-4 * (1 + np.abs(y).max()):
        raise _not_applicable(f"the model output is not affine in its features (residual {residual:.3g})")
    return coef[:-1].T, coef[-1]


class Linear:
    """Closed-form Shapley values of a linear model's margin (``info['output_space'] = 'margin'``)."""

    name = "linear"

    def explain(self, task: ExplainTask) -> Attributions:
        """Explain every row exactly.

        Raises:
            InvalidRequest: The model is not linear in its raw features
                (``method_not_applicable``), or no background.
            ExplanationFailed: The model failed.
        """
        require_background(task, self.name)
        with library_failures(self.name):
            graph = read_linear_graph(task.onnx_model) if task.onnx_model else None
            if graph is None:
                weights, intercepts = _fit_affine(task)
            else:
                weights, intercepts = graph.weights, graph.intercepts
                self._check(task, graph)
            mean = task.background.mean(axis=0)
            values = (task.X - mean)[:, :, None] * weights.T[None, :, :]
            base = np.tile(weights @ mean + intercepts, (len(task.X), 1))
            output = task.X @ weights.T + intercepts
        return Attributions(
            base_values=base,
            values=values,
            output_values=output,
            quality=[{"converged": True} for _ in task.X],
            info={"output_space": "margin", "source": "graph" if graph is not None else "fitted"},
        )

    @staticmethod
    def _check(task: ExplainTask, graph: LinearGraph) -> None:
        """Raise unless the graph's score, through its post-transform, reproduces ``task.f``."""
        if graph.weights.shape != (len(task.output_names), task.X.shape[1]):
            raise _not_applicable(
                f"the graph scores {graph.weights.shape[0]} outputs of {graph.weights.shape[1]} inputs, "
                f"the model card has {len(task.output_names)} outputs of {task.X.shape[1]} features"
            )
        rows = np.vstack([task.background[:64], task.X[:64]])
        expected = _model_output(graph, rows @ graph.weights.T + graph.intercepts)
        if expected is None:
            raise _not_applicable(f"post_transform {graph.post_transform} is not supported")
        actual = np.asarray(task.f(rows), dtype=np.float64)
        if graph.one_row_binary:
            expected, actual = expected[:, 1:], actual[:, 1:]
        if not np.allclose(expected, actual, rtol=1e-4, atol=1e-4 * (1 + np.abs(actual).max())):
            raise _not_applicable("the graph's linear score does not reproduce the model's outputs")

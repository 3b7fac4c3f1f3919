"""What every explainer receives and returns.

Explainers work in *raw feature space*: a float64 matrix with one column per
feature of the model card, categorical features encoded as the index of
their category. ``ExplainTask.f`` decodes that matrix into the model's ONNX
inputs, runs onnxruntime in large batches and returns the explained output
(probabilities per class, or the regression value), so explainers never see
ONNX and attributions come out per raw feature automatically. ``f`` also
takes float32 rows when ``ExplainTask.row_dtype`` says so (the model reads
float32 anyway), for methods that build millions of rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, InvalidRequest, OnnxplainError

ModelFn = Callable[[FloatArray], FloatArray]


@dataclass(frozen=True)
class ExplainTask:
    """One explanation problem.

    Attributes:
        f: Model function, ``(n, d)`` raw-feature rows → ``(n, k)`` outputs.
        X: Rows to explain, ``(n, d)``.
        background: Reference rows, ``(m, d)``; may be empty for methods
            that need none.
        feature_names: The ``d`` feature names, in column order.
        output_names: The ``k`` output names (class names, or the
            regression target).
        targets: For each row of ``X``, the output columns to explain.
        params: Method parameters, already validated against the method's
            bounds.
        seed: Seed for every random choice the method makes.
        categorical: Column indices of categorical features.
        onnx_model: The serialized ONNX model, for methods that read the
            graph (``tree_shap``, ``linear``, gradients); ``None`` otherwise.
        output: The explained ONNX output's name, for methods that differentiate the graph.
        row_dtype: A type ``f`` also takes rows in, giving the same outputs: ``np.float32`` when the model
            reads float32 anyway, so a method that builds many rows may build them narrower.
    """

    f: ModelFn
    X: FloatArray
    background: FloatArray
    feature_names: list[str]
    output_names: list[str]
    targets: list[list[int]]
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    categorical: tuple[int, ...] = ()
    onnx_model: bytes | None = None
    output: str | None = None
    row_dtype: type[np.floating[Any]] = np.float64


@dataclass
class Attributions:
    """An explainer's answer for all rows and all outputs.

    Attributes:
        base_values: ``(n, k)`` expected output over the background (the
            surrogate's intercept for LIME).
        values: ``(n, d, k)`` attribution of each feature to each output.
        std_errors: ``(n, d, k)`` standard error of each attribution for
            sampled methods; ``None`` for exact ones.
        output_values: ``(n, k)`` the output the attributions explain, in
            the same space as ``base_values`` (probability, or margin for
            ``tree_shap``/``linear`` in margin mode).
        quality: One dict per row, merged into each target's ``quality``
            (e.g. ``{"converged": True}``, LIME's ``score``).
        info: Method facts recorded in the response's ``parameters`` (e.g.
            ``{"output_space": "margin"}``).
        additive: The attributions add up to output minus base (``saliency``'s
            gradients do not: the answer then has no ``base_value`` or residual).
    """

    base_values: FloatArray
    values: FloatArray
    output_values: FloatArray
    std_errors: FloatArray | None = None
    quality: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    additive: bool = True


class Explainer(Protocol):
    """An explanation method.

    Implementations are plain classes built with no arguments; heavy
    libraries are imported inside ``explain`` or at the top of the
    implementing module (which is itself imported lazily). What the method
    accepts, costs and needs is its entry in the method table
    (:data:`engine.methods.METHODS`).
    """

    name: str

    def explain(self, task: ExplainTask) -> Attributions:
        """Explain every row of ``task.X`` for every output.

        Raises:
            InvalidRequest: A parameter or the model does not suit the method.
            ExplanationFailed: The method failed on valid input.
        """
        ...


@contextmanager
def library_failures(method: str) -> Iterator[None]:
    """Re-raise anything but an onnxplain error as :class:`ExplanationFailed`.

    shap and lime raise bare ``ValueError``/``AssertionError``/``LinAlgError``
    on inputs that passed our validation; the API must see one error tree.
    """
    try:
        yield
    except OnnxplainError:
        raise
    except Exception as exc:
        raise ExplanationFailed(f"{method} failed: {type(exc).__name__}: {exc}") from exc


def require_background(task: ExplainTask, method: str) -> None:
    """Raise ``InvalidRequest`` (``background_required``) when ``task`` has no background rows."""
    if task.background.ndim != 2 or task.background.shape[0] == 0:
        raise InvalidRequest(f"method {method!r} needs background rows", code="background_required", field="background")

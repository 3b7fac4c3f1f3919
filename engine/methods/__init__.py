"""The explanation methods: which exist, what they accept, which one ``auto`` picks.

This module is imported by the API process, so it names the implementations
by import string and never imports shap, lime or the implementing modules
itself; :func:`get_explainer` imports one when a worker first needs it.

NOTE: to add a method:
    1. Write ``engine/methods/<module>.py`` with a class that satisfies
       :class:`engine.methods.base.Explainer` (``name``,
       ``needs_background``, ``explain(task) -> Attributions``); import its
       heavy libraries there, never here.
    2. Add ``"<name>": "engine.methods.<module>:<Class>"`` to
       :data:`EXPLAINERS`.
    3. Add its parameters to :data:`PARAMETERS` (always including ``seed``);
       the explainer may then read ``task.params[...]`` without checking.
    4. If ``auto`` should ever pick it, extend :func:`choose_auto`.
    5. Test it in ``tests/engine/test_explainers.py`` against the exact
       Shapley values of a small real ONNX model (additivity, determinism by
       seed), and add it to ``openapi.yaml``'s method enum.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from engine.errors import ExplanationFailed, InvalidRequest, OnnxplainError, UnknownField

if TYPE_CHECKING:
    from engine.methods.base import Explainer, ExplainTask

EXPLAINERS: dict[str, str] = {
    "kernel_shap": "engine.methods.kernel_shap:KernelShap",
    "lime": "engine.methods.lime_tabular:LimeTabular",
    "exact": "engine.methods.exact:Exact",
    "permutation": "engine.methods.permutation:Permutation",
    "linear": "engine.methods.linear:Linear",
    "tree_shap": "engine.methods.tree_shap:TreeShap",
}


@dataclass(frozen=True)
class ParamSpec:
    """One accepted method parameter.

    Attributes:
        types: Accepted JSON types (``"integer"``, ``"number"``,
            ``"boolean"``, ``"string"``).
        default: Value used when the caller omits the parameter; ``None``
            makes the parameter optional (and ``null`` an accepted value).
        description: One line for the API documentation.
        minimum: Inclusive lower bound for numbers.
        maximum: Inclusive upper bound for numbers.
        choices: When set, the only accepted booleans and strings (numbers
            are still checked against the bounds).
        pattern: A regular expression that also admits a string.
    """

    types: tuple[str, ...]
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    pattern: str | None = None


_SEED = ParamSpec(("integer",), 0, "Seed for every random choice; same seed, same answer.", 0, 2**32 - 1)
_TIME_BUDGET = ParamSpec(
    ("integer",),
    None,
    "Stop sampling after this many milliseconds and return the estimate reached, with its error.",
    1,
    3_600_000,
)

PARAMETERS: dict[str, dict[str, ParamSpec]] = {
    "kernel_shap": {
        "nsamples": ParamSpec(
            ("integer",), 2048, "Coalitions evaluated per row, in one run; std_error by jackknife.", 16, 100_000
        ),
        "l1_reg": ParamSpec(
            ("boolean", "integer", "string"),
            False,
            'false (keep every feature), k, "num_features(k)", "aic" or "bic" to truncate.',
            1,
            10_000,
            choices=(False, "aic", "bic"),
            pattern=r"num_features\([1-9][0-9]*\)",
        ),
        "time_budget_ms": ParamSpec(
            ("integer",),
            None,
            "Lower nsamples to what a timed model call says fits in this many milliseconds; "
            "the estimate comes with its error.",
            1,
            3_600_000,
        ),
        "seed": _SEED,
    },
    "lime": {
        "num_samples": ParamSpec(("integer",), 5000, "Perturbed samples the surrogate is fitted on.", 100, 100_000),
        "num_features": ParamSpec(("integer",), None, "Features kept in the surrogate (default: all).", 1, 10_000),
        "discretize_continuous": ParamSpec(("boolean",), True, "Discretize continuous features into quartiles."),
        "seed": _SEED,
    },
    "exact": {
        "max_features": ParamSpec(("integer",), 14, "Refuse models with more features (cost is 2^features).", 1, 16),
        "seed": _SEED,
    },
    "permutation": {
        "max_evals": ParamSpec(
            ("integer",), 2048, "Model evaluations per row: max_evals // (2 × features + 1) orderings.", 3, 1_000_000
        ),
        "repeats": ParamSpec(
            ("integer",), 8, "Groups the orderings are split into; their spread gives std_error.", 2, 64
        ),
        "time_budget_ms": _TIME_BUDGET,
        "seed": _SEED,
    },
    "linear": {"seed": _SEED},
    "tree_shap": {
        "output_space": ParamSpec(
            ("string",),
            "margin",
            "Explain the raw margin, or the probability (interventional).",
            choices=("margin", "probability"),
        ),
        "seed": _SEED,
    },
}


def get_explainer(name: str) -> Explainer:
    """Import and build the explainer registered under ``name``.

    Args:
        name: A key of :data:`EXPLAINERS`.

    Returns:
        A fresh explainer instance.

    Raises:
        InvalidRequest: ``name`` is not a known method (code ``unknown_method``).
    """
    target = EXPLAINERS.get(name)
    if target is None:
        raise InvalidRequest(
            f"unknown method {name!r}; known: {', '.join(sorted(EXPLAINERS))}",
            code="unknown_method",
            field="method",
        )
    module_name, class_name = target.split(":")
    explainer_class = getattr(importlib.import_module(module_name), class_name)
    return cast("Explainer", explainer_class())


def validate_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check a method's parameters and fill in the defaults.

    Args:
        method: A key of :data:`PARAMETERS`.
        params: The caller's parameters (decoded JSON).

    Returns:
        A new dict with every parameter of the method.

    Raises:
        InvalidRequest: Unknown method (``unknown_method``), or a value of
            the wrong type or out of bounds (``invalid_parameter``).
        UnknownField: A parameter the method does not accept.
    """
    specs = PARAMETERS.get(method)
    if specs is None:
        raise InvalidRequest(f"unknown method {method!r}", code="unknown_method", field="method")
    for name in params:
        if name not in specs:
            raise UnknownField(
                f"method {method!r} has no parameter {name!r}; accepted: {', '.join(specs)}",
                field=f"parameters.{name}",
            )
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        value = params.get(name, spec.default)
        problem = _problem(value, spec)
        if problem is not None:
            raise InvalidRequest(f"parameter {name!r} {problem}", code="invalid_parameter", field=f"parameters.{name}")
        out[name] = value
    return out


def _problem(value: Any, spec: ParamSpec) -> str | None:
    """Say what is wrong with ``value`` under ``spec``, or return ``None``."""
    if value is None:
        return None if spec.default is None else "must not be null"
    kind = _json_type(value)
    if kind == "integer" and "integer" not in spec.types:
        kind = "number"
    if kind not in spec.types:
        return f"must be of type {' or '.join(spec.types)}"
    if kind in ("integer", "number"):
        if not math.isfinite(value):
            return "must be finite"
        if spec.minimum is not None and value < spec.minimum:
            return f"must be >= {spec.minimum:g}"
        if spec.maximum is not None and value > spec.maximum:
            return f"must be <= {spec.maximum:g}"
        return None
    if spec.choices is None and spec.pattern is None:
        return None
    if any(type(value) is type(choice) and value == choice for choice in spec.choices or ()):
        return None
    if isinstance(value, str) and spec.pattern is not None and re.fullmatch(spec.pattern, value):
        return None
    allowed = [repr(c) for c in spec.choices or ()] + ([f"/{spec.pattern}/"] if spec.pattern else [])
    return f"must be one of {', '.join(allowed)}"


def _json_type(value: Any) -> str | None:
    """Name the JSON type of a decoded value; bool is an int subclass in Python, not in JSON."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def choose_auto(n_features: int, is_tree: bool, is_linear: bool, exact_max_features: int) -> tuple[str, str]:
    """Pick the cheapest method that gives exact attributions, else ``kernel_shap``.

    Args:
        n_features: Number of raw features of the model.
        is_tree: The ONNX graph is a tree ensemble.
        is_linear: The ONNX graph is linear (see ``linear.is_linear``).
        exact_max_features: The largest feature count ``exact`` accepts.

    Returns:
        ``(method, reason)``, the reason being one sentence for the response.
    """
    if is_tree:
        return "tree_shap", "The model is a tree ensemble, so TreeSHAP gives exact attributions."
    if is_linear:
        return "linear", "The model is linear, so exact attributions have a closed form."
    if n_features <= exact_max_features:
        return "exact", (
            f"The model has {n_features} features (at most {exact_max_features}), "
            "so every coalition is evaluated for exact Shapley values."
        )
    return "kernel_shap", (
        f"The model has {n_features} features (more than {exact_max_features}) and no exact method "
        "applies, so Kernel SHAP estimates the attributions with standard errors."
    )


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

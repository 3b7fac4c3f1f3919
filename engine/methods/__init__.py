"""The method table: every explanation method, what it accepts and costs, in one place.

Validation (:func:`validate_params`), costing (:func:`evaluations_per_row`), ``auto`` (:func:`choose_auto`) and
the OpenAPI method enum (a test compares them) all read :data:`METHODS`. This module is imported by the API
process, so it names implementations by import string and never imports shap, lime or the implementing modules;
:func:`get_explainer` imports one when a worker first needs it.

NOTE: to add a method:
    1. Write ``engine/methods/<module>.py`` with a class that satisfies :class:`engine.methods.base.Explainer`
       (``name``, ``explain(task) -> Attributions``); import its heavy libraries there, never here.
    2. Add one :class:`Method` to :data:`METHODS`: import path, input kinds, parameters (always ``seed``; the
       explainer may then read ``task.params[...]`` without checking), cost per row, caps, whether it samples
       and needs background rows.
    3. If ``auto`` should ever pick it, extend :func:`choose_auto`.
    4. Test it in ``tests/engine/methods/`` against the exact Shapley values of a small real ONNX model
       (additivity, determinism by seed), and add it to ``openapi.yaml``'s method enums.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from engine.errors import InvalidRequest, UnknownField

if TYPE_CHECKING:
    from engine.methods.base import Explainer


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


_TIME_BUDGET = ParamSpec(
    ("integer",),
    None,
    "Lower nsamples to what a timed model call says fits in this many milliseconds; the estimate comes with its error.",
    1,
    3_600_000,
)
_SEED = ParamSpec(("integer",), 0, "Seed for every random choice; same seed, same answer.", 0, 2**32 - 1)
_TIME_BUDGET = ParamSpec(
    ("integer",),
    None,
    "Stop sampling after this many milliseconds and return the estimate reached, with its error.",
    1,
    3_600_000,
)

CostFn = Callable[[Mapping[str, Any], int, int], int]
"""Model rows evaluated per explained row, from ``(parameters, features, background rows)``.

For image and text inputs "features" are the pixels (height × width) or the words of the longest text."""


@dataclass(frozen=True)
class Method:
    """One entry of the method table.

    Attributes:
        name: The name requests use (``method``).
        target: ``"module:Class"`` of the implementation, imported only when first used.
        input_kinds: Model input kinds it explains (``tabular`` today; ``image``, ``text`` later).
        params: The parameters it accepts, with defaults and bounds.
        cost: Model rows evaluated per explained row (the request's cost check multiplies by rows).
        samples: It estimates by sampling (and so reports ``std_error`` and is capped by
            ``Settings.max_explain_features``).
        needs_background: It needs the model's background rows (tabular inputs; image and text methods need them
            only for ``baseline="background"``).
        max_features: Most features it accepts at all (its default cap), or ``None``.
        kinds: For input kinds whose parameters or cost differ from the tabular ones (``lime`` on images
            segments superpixels), ``kind -> (params, cost)``; kinds not listed use ``params`` and ``cost``.
        gradients: It differentiates the graph (needs the ``gradients`` extra and a differentiable model).
        kind_targets: ``kind -> "module:Class"`` for kinds implemented apart from ``target`` (tabular
            gradients are an :class:`~engine.methods.base.Explainer`, image maps a function).
        tasks: The model tasks it explains (``anchors``: classifiers only).
    """

    name: str
    target: str
    input_kinds: tuple[str, ...]
    params: Mapping[str, ParamSpec]
    cost: CostFn
    samples: bool
    needs_background: bool = True
    max_features: int | None = None
    kinds: Mapping[str, tuple[Mapping[str, ParamSpec], CostFn]] = field(default_factory=dict)
    gradients: bool = False
    kind_targets: Mapping[str, str] = field(default_factory=dict)
    tasks: tuple[str, ...] = ("classification", "regression")

    def target_for(self, kind: str) -> str:
        """The ``module:name`` implementing this method for ``kind`` inputs."""
        return self.kind_targets.get(kind, self.target)

    def params_for(self, kind: str) -> Mapping[str, ParamSpec]:
        """The parameters this method accepts for ``kind`` inputs."""
        return self.kinds[kind][0] if kind in self.kinds else self.params

    def cost_for(self, kind: str) -> CostFn:
        """The cost formula for ``kind`` inputs."""
        return self.kinds[kind][1] if kind in self.kinds else self.cost


_FAITHFULNESS = 2 * 11 * 5
"""Model evaluations of the deletion and insertion curves on every image/text answer (10 steps, 4 random orders)."""
_BASELINE = ParamSpec(
    ("string",),
    "black",
    "What removed pixels become: black, a Gaussian blur of the image, or the mean background image.",
    choices=("black", "blurred", "background"),
)
_STEPS = ParamSpec(
    ("integer",), 64, "Integration steps (Gauss-Legendre); more steps, smaller convergence delta.", 4, 1024
)
_IMAGE_MAP_SAMPLES = ParamSpec(("integer",), 1000, "Perturbed inputs the surrogate is fitted on.", 50, 100_000)

EXACT_MAX_FEATURES = 14
"""The most features ``exact`` enumerates by default (cost is 2^features); ``auto`` picks it up to here."""

_TABULAR = ("tabular",)
_IMAGE = ("image",)
_ROW_BASELINE = ParamSpec(
    ("string",),
    "background",
    "The reference row: the mean of the background rows, or all zeros.",
    choices=("background", "zeros"),
)
_ROW_GRADIENTS = "engine.methods.gradient_rows"

METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "kernel_shap",
            "engine.methods.kernel_shap:KernelShap",
            _TABULAR,
            {
                "nsamples": ParamSpec(
                    ("integer",),
                    2048,
                    "Budget in coalitions evaluated on the whole background (nsamples × background model rows); "
                    "exact when it covers every coalition.",
                    16,
                    100_000,
                ),
                "background_rows": ParamSpec(
                    ("integer",),
                    10,
                    "Background rows each sampled coalition is evaluated on (more coalitions for the same model "
                    "rows); at least the background's size means all of them.",
                    1,
                    100_000,
                ),
                "tolerance": ParamSpec(
                    ("number",),
                    None,
                    "Sample in rounds until every std_error is at most this (output units) or nsamples is spent.",
                    1e-12,
                    1e6,
                ),
                "time_budget_ms": _TIME_BUDGET,
                "seed": _SEED,
            },
            lambda params, d, background: int(params["nsamples"]) * background,
            samples=True,
        ),
        Method(
            "kernel_shap_reference",
            "engine.methods.kernel_shap_reference:KernelShapReference",
            _TABULAR,
            {
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
                "time_budget_ms": _TIME_BUDGET,
                "seed": _SEED,
            },
            lambda params, d, background: int(params["nsamples"]) * background,
            samples=True,
        ),
        Method(
            "lime",
            "engine.methods.lime_tabular:LimeTabular",
            ("tabular", "image", "text"),
            {
                "num_samples": ParamSpec(
                    ("integer",), 5000, "Perturbed samples the surrogate is fitted on.", 100, 100_000
                ),
                "num_features": ParamSpec(
                    ("integer",), None, "Features kept in the surrogate (default: all).", 1, 10_000
                ),
                "discretize_continuous": ParamSpec(
                    ("boolean",), True, "Discretize continuous features into quartiles."
                ),
                "seed": _SEED,
            },
            lambda params, d, background: int(params["num_samples"]),
            samples=True,
            kinds={
                "image": (
                    {
                        "num_samples": _IMAGE_MAP_SAMPLES,
                        "segments": ParamSpec(("integer",), 16, "About how many superpixels.", 2, 10_000),
                        "segmentation": ParamSpec(
                            ("string",),
                            "slic",
                            "scikit-image superpixels: slic, quickshift or felzenszwalb.",
                            choices=("slic", "quickshift", "felzenszwalb"),
                        ),
                        "hide": ParamSpec(
                            ("string",),
                            "black",
                            "Hidden superpixels become black, or their mean colour.",
                            choices=("black", "mean"),
                        ),
                        "seed": _SEED,
                    },
                    lambda params, d, background: int(params["num_samples"]) + _FAITHFULNESS,
                ),
                "text": (
                    {"num_samples": _IMAGE_MAP_SAMPLES, "seed": _SEED},
                    lambda params, d, background: int(params["num_samples"]) + _FAITHFULNESS,
                ),
            },
        ),
        Method(
            "exact",
            "engine.methods.exact:Exact",
            _TABULAR,
            {
                "max_features": ParamSpec(
                    ("integer",), EXACT_MAX_FEATURES, "Refuse models with more features (cost is 2^features).", 1, 16
                ),
                "seed": _SEED,
            },
            lambda params, d, background: (2**d) * background,
            samples=False,
            max_features=EXACT_MAX_FEATURES,
        ),
        Method(
            "permutation",
            "engine.methods.permutation:Permutation",
            _TABULAR,
            {
                "max_evals": ParamSpec(
                    ("integer",),
                    2048,
                    "Model evaluations per row: max_evals // (2 × features + 1) orderings.",
                    3,
                    1_000_000,
                ),
                "repeats": ParamSpec(
                    ("integer",), 8, "Groups the orderings are split into; their spread gives std_error.", 2, 64
                ),
                "time_budget_ms": _TIME_BUDGET,
                "seed": _SEED,
            },
            lambda params, d, background: int(params["max_evals"]) * background,
            samples=True,
        ),
        Method(
            "linear",
            "engine.methods.linear:Linear",
            _TABULAR,
            {"seed": _SEED},
            lambda params, d, background: background,
            samples=False,
        ),
        Method(
            "anchors",
            "engine.methods.anchors:Anchors",
            _TABULAR,
            {
                "threshold": ParamSpec(
                    ("number",), 0.95, "Precision an anchor must reach (its lower confidence bound).", 0.5, 1.0
                ),
                "delta": ParamSpec(("number",), 0.05, "1 - confidence of the precision bounds.", 1e-6, 0.5),
                "epsilon": ParamSpec(
                    ("number",), 0.1, "KL-LUCB's tolerance when choosing the most precise anchors.", 1e-4, 1.0
                ),
                "beam_size": ParamSpec(("integer",), 2, "Anchors kept per size in the beam search.", 1, 32),
                "batch_size": ParamSpec(("integer",), 100, "Samples drawn per bandit pull.", 10, 10_000),
                "max_samples": ParamSpec(
                    ("integer",), 20_000, "Most model evaluations per row (the search stops there).", 100, 1_000_000
                ),
                "max_anchor_size": ParamSpec(
                    ("integer",), None, "Most conditions in a rule (default: every feature).", 1, 10_000
                ),
                "seed": _SEED,
            },
            lambda params, d, background: int(params["max_samples"]),
            samples=False,
            tasks=("classification",),
        ),
        Method(
            "tree_shap",
            "engine.methods.tree_shap:TreeShap",
            _TABULAR,
            {
                "output_space": ParamSpec(
                    ("string",),
                    "margin",
                    "Explain the raw margin, or the probability (interventional).",
                    choices=("margin", "probability"),
                ),
                "seed": _SEED,
            },
            lambda params, d, background: background,
            samples=False,
        ),
        Method(
            "partition",
            "engine.methods.partition:partition_image",
            ("image", "text"),
            {
                "max_evals": ParamSpec(
                    ("integer",), 1000, "Model evaluations of shap's Partition explainer.", 10, 100_000
                ),
                "baseline": _BASELINE,
                "seed": _SEED,
            },
            lambda params, d, background: int(params["max_evals"]) + _FAITHFULNESS,
            samples=False,
            needs_background=False,
            kinds={
                "text": (
                    {
                        "max_evals": ParamSpec(
                            ("integer",), 500, "Model evaluations of shap's Partition explainer.", 10, 100_000
                        ),
                        "seed": _SEED,
                    },
                    lambda params, d, background: int(params["max_evals"]) + _FAITHFULNESS,
                )
            },
        ),
        Method(
            "occlusion",
            "engine.methods.occlusion:occlude_image",
            ("image", "text"),
            {
                "patch": ParamSpec(
                    ("integer",), None, "Side of the square patch (default: 1/8 of the shorter side).", 1, 4096
                ),
                "stride": ParamSpec(("integer",), None, "Step between patches (default: half the patch).", 1, 4096),
                "baseline": _BASELINE,
                "seed": _SEED,
            },
            lambda params, d, background: d // max(1, int(params["stride"] or 1)) ** 2 + 1 + _FAITHFULNESS,
            samples=False,
            needs_background=False,
            kinds={"text": ({"seed": _SEED}, lambda params, d, background: d + 1 + _FAITHFULNESS)},
        ),
        Method(
            "grad_cam",
            "engine.methods.gradients:grad_cam",
            _IMAGE,
            {
                "layer": ParamSpec(
                    ("string",),
                    None,
                    "The convolution to explain at (default: the last); GET the model for its layers.",
                ),
                "seed": _SEED,
            },
            lambda params, d, background: 2 + _FAITHFULNESS,
            samples=False,
            needs_background=False,
            gradients=True,
        ),
        Method(
            "saliency",
            "engine.methods.gradients:saliency",
            ("image", "tabular"),
            {"seed": _SEED},
            lambda params, d, background: 2 + _FAITHFULNESS,
            samples=False,
            needs_background=False,
            gradients=True,
            kinds={"tabular": ({"seed": _SEED}, lambda params, d, background: 2)},
            kind_targets={"tabular": f"{_ROW_GRADIENTS}:RowSaliency"},
        ),
        Method(
            "integrated_gradients",
            "engine.methods.gradients:integrated_gradients",
            ("image", "text", "tabular"),
            {"baseline": _BASELINE, "steps": _STEPS, "seed": _SEED},
            lambda params, d, background: int(params["steps"]) + 2 + _FAITHFULNESS,
            samples=False,
            needs_background=False,
            gradients=True,
            kinds={
                "text": (
                    {"steps": _STEPS, "seed": _SEED},
                    lambda params, d, background: int(params["steps"]) + 2 + _FAITHFULNESS,
                ),
                "tabular": (
                    {"baseline": _ROW_BASELINE, "steps": _STEPS, "seed": _SEED},
                    lambda params, d, background: int(params["steps"]) + 2,
                ),
            },
            kind_targets={"tabular": f"{_ROW_GRADIENTS}:RowIntegratedGradients"},
        ),
        Method(
            "smoothgrad",
            "engine.methods.gradients:smoothgrad",
            _IMAGE,
            {
                "samples": ParamSpec(("integer",), 32, "Noisy copies averaged.", 1, 4096),
                "noise": ParamSpec(("number",), 0.15, "Noise std in unit pixels (images are in [0, 1]).", 0.0, 1.0),
                "seed": _SEED,
            },
            lambda params, d, background: int(params["samples"]) + 1 + _FAITHFULNESS,
            samples=True,
            needs_background=False,
            gradients=True,
        ),
    )
}
"""Every method, by name (``auto`` is not one: it picks one of these)."""

EXPLAINERS: dict[str, str] = {name: method.target for name, method in METHODS.items()}
"""Import path of each method's implementation (a view of :data:`METHODS`)."""

PARAMETERS: dict[str, Mapping[str, ParamSpec]] = {name: method.params for name, method in METHODS.items()}
"""Parameters of each method (a view of :data:`METHODS`)."""


def find_method(name: str) -> Method:
    """Return the table entry of ``name``.

    Raises:
        InvalidRequest: ``unknown_method``.
    """
    found = METHODS.get(name)
    if found is None:
        raise InvalidRequest(
            f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}", code="unknown_method", field="method"
        )
    return found


def evaluations_per_row(
    name: str, params: Mapping[str, Any], d: int, background_rows: int, kind: str = "tabular"
) -> int:
    """Model rows one explained row (image, text) costs under ``name`` with its validated ``params``."""
    return int(find_method(name).cost_for(kind)(params, d, max(background_rows, 1)))


def get_explainer(name: str, kind: str = "tabular") -> Explainer:
    """Import and build the explainer registered under ``name``.

    Args:
        name: A key of :data:`METHODS`.
        kind: The model's input kind (a method may be implemented apart per kind).

    Returns:
        A fresh explainer instance.

    Raises:
        InvalidRequest: ``name`` is not a known method (code ``unknown_method``).
    """
    module_name, class_name = find_method(name).target_for(kind).split(":")
    explainer_class = getattr(importlib.import_module(module_name), class_name)
    return cast("Explainer", explainer_class())


def validate_params(method: str, params: Mapping[str, Any], kind: str = "tabular") -> dict[str, Any]:
    """Check a method's parameters and fill in the defaults.

    Args:
        method: A key of :data:`PARAMETERS`.
        params: The caller's parameters (decoded JSON).
        kind: The model's input kind (``lime`` takes other parameters on images).

    Returns:
        A new dict with every parameter of the method.

    Raises:
        InvalidRequest: Unknown method (``unknown_method``), or a value of
            the wrong type or out of bounds (``invalid_parameter``).
        UnknownField: A parameter the method does not accept.
    """
    specs = METHODS[method].params_for(kind) if method in METHODS else None
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


def choose_auto(
    n_features: int,
    is_tree: bool,
    is_linear: bool,
    exact_max_features: int = EXACT_MAX_FEATURES,
    *,
    differentiable: bool = False,
) -> tuple[str, str]:
    """Pick the cheapest method that gives exact attributions, else integrated gradients or ``kernel_shap``.

    Args:
        n_features: Number of raw features of the model.
        is_tree: The ONNX graph is a tree ensemble.
        is_linear: The ONNX graph is linear (see ``linear.is_linear``).
        exact_max_features: The largest feature count ``exact`` is picked for (the table's cap).
        differentiable: Gradients of the model can be taken (one float feature tensor, no tree or
            discrete operator) and it has background rows for the baseline.

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
    if differentiable:
        # Integrated gradients from the background mean is additive (Aumann-Shapley) at about 66 model
        # evaluations per row, against Kernel SHAP's thousands of coalitions times the background.
        return "integrated_gradients", (
            f"The model has {n_features} features (more than {exact_max_features}) and is differentiable, so "
            "integrated gradients from the background mean gives additive attributions from a few dozen gradients."
        )
    return "kernel_shap", (
        f"The model has {n_features} features (more than {exact_max_features}) and no exact method "
        "applies, so Kernel SHAP estimates the attributions with standard errors."
    )

"""A ``:counterfactual`` request: validated by the API (no model evaluation), run by a worker, answered as JSON.

:func:`build_counterfactual` checks the body and returns the job payload; :func:`run_counterfactual` (the worker)
searches every row with :func:`recourse_of` and returns the answer (``openapi.yaml``'s ``Counterfactuals``).
Audits call :func:`recourse_of` on their rows.
"""

from __future__ import annotations

import importlib.metadata
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest, JobCanceled, UnknownField
from engine.models.card import ModelCard
from engine.models.constraints import Constraints
from engine.models.rows import parse_instances, row_values
from engine.models.store import ModelRegistry, ModelVersion
from engine.recourse.goal import Goal
from engine.recourse.quality import describe, diversity, features_changed
from engine.recourse.search import (
    DIAGNOSED_ROWS,
    binding_constraints,
    diagnosis_evaluations,
    evaluations_per_row,
    find,
)
from engine.recourse.space import Space, build_space
from engine.serving import Predictor, format_predictions
from engine.settings import Settings

PARAMETERS: dict[str, tuple[int, int, int, str]] = {
    "k": (3, 1, 20, "Most counterfactuals per row (diverse, cheapest first)."),
    "samples": (1000, 16, 100_000, "Sampled multi-feature candidates per row."),
    "seed": (0, 0, 2**32 - 1, "Seed for every random choice; same seed, same answer."),
}
"""``parameters``: name → (default, minimum, maximum, description)."""


def validate_parameters(raw: object) -> dict[str, int]:
    """Check ``parameters`` (``k``, ``samples``, ``seed``) and fill in the defaults.

    Raises:
        InvalidRequest: ``invalid_parameter`` for a value of the wrong type or out of bounds.
        UnknownField: A parameter not in :data:`PARAMETERS`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest("parameters must be an object", code="invalid_parameter", field="parameters")
    for name in raw:
        if name not in PARAMETERS:
            raise UnknownField(f"no parameter {name!r}; accepted: {', '.join(PARAMETERS)}", field=f"parameters.{name}")
    out: dict[str, int] = {}
    for name, (default, low, high, _) in PARAMETERS.items():
        value = raw.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(
                f"parameter {name!r} must be an integer from {low} to {high}",
                code="invalid_parameter",
                field=f"parameters.{name}",
            )
        out[name] = value
    return out


def build_counterfactual(body: dict[str, Any], model: ModelVersion, settings: Settings, variant: str) -> dict[str, Any]:
    """Validate a ``:counterfactual`` body against the model; return the job payload.

    Raises:
        InvalidRequest: Not a tabular model, no background, bad rows, ``desired``/``desired_range``,
            constraints or parameters, or too expensive.
    """
    card = model.card
    if card.input_kind != "tabular":
        raise InvalidRequest(
            f"counterfactuals are for tabular models; {model.name!r} takes {card.input_kind}",
            code="input_kind_not_supported",
            field="instances",
        )
    if model.background_rows == 0:
        raise InvalidRequest(
            f"model {model.name!r} v{model.version} has no background data, which counterfactuals need "
            "(ranges, scales, plausibility); register it with a 'background' part",
            code="background_required",
            field="instances",
        )
    X = parse_instances(body.get("instances"), card, max_rows=settings.max_explain_rows)
    desired, desired_range = _desired(body, card)
    constraints = card.constraints.merged(
        Constraints.parse(body.get("constraints"), card.features, where="constraints", code="invalid_constraints")
    )
    params = validate_parameters(body.get("parameters"))
    d = len(card.features)
    categories = sum(len(f.categories) for f in card.features)
    cost = len(X) * evaluations_per_row(d, params["samples"], categories) + min(
        len(X), DIAGNOSED_ROWS
    ) * diagnosis_evaluations(d, params["samples"], categories)
    if cost > settings.max_model_evaluations:
        raise InvalidRequest(
            f"this request could cost about {cost:,} model evaluations, over the limit of "
            f"{settings.max_model_evaluations:,}; send fewer rows or lower parameters.samples",
            code="too_expensive",
            field="parameters",
        )
    return {
        "model": model.name,
        "version": model.version,
        "sha256": model.sha256,
        "variant": variant,
        "rows": X.tolist(),
        "desired": desired,
        "desired_range": desired_range,
        "constraints": constraints.to_dict(),
        "parameters": params,
    }


def _desired(body: dict[str, Any], card: ModelCard) -> tuple[str | None, list[float | None] | None]:
    """``desired`` (a class; a binary model's default is the other class) or ``desired_range`` (regression)."""
    desired, desired_range = body.get("desired"), body.get("desired_range")
    if card.task == "classification":
        if desired_range is not None:
            raise InvalidRequest(
                "desired_range is for regression models; name a class in desired",
                code="invalid_parameter",
                field="desired_range",
            )
        if desired is None:
            if len(card.class_names) == 2:
                return None, None
            raise InvalidRequest(
                f"name the class to reach in desired: one of {list(card.class_names)}",
                code="missing_field",
                field="desired",
            )
        if not isinstance(desired, str) or desired not in card.class_names:
            raise InvalidRequest(
                f"desired must be one of the classes {list(card.class_names)}", code="unknown_target", field="desired"
            )
        return desired, None
    if desired is not None:
        raise InvalidRequest(
            "desired names a class; a regression takes desired_range [low, high]",
            code="invalid_parameter",
            field="desired",
        )
    ok = (
        isinstance(desired_range, list)
        and len(desired_range) == 2
        and all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v))
            for v in desired_range
        )
        and any(v is not None for v in desired_range)
    )
    if not ok:
        raise InvalidRequest(
            "desired_range must be [low, high] of finite numbers (one may be null)",
            code="invalid_parameter" if desired_range is not None else "missing_field",
            field="desired_range",
        )
    assert isinstance(desired_range, list)
    low, high = (None if v is None else float(v) for v in desired_range)
    if low is not None and high is not None and low > high:
        raise InvalidRequest(
            f"desired_range is empty: {low:g} > {high:g}", code="invalid_parameter", field="desired_range"
        )
    return None, [low, high]


@dataclass
class Recourse:
    """One row's search.

    Attributes:
        status: ``found``, ``not_found`` or ``already_desired``.
        goal: The outcome searched for.
        counterfactuals: ``(n, d)`` cheapest first (empty unless found).
        cost: The cheapest one's proximity (0 when already desired, ``None`` when not found).
        binding: When not found, the constraints that, lifted alone, allow one (cheapest first).
    """

    status: str
    goal: Goal
    counterfactuals: FloatArray
    cost: float | None
    binding: list[dict[str, Any]] = field(default_factory=list)


def goal_of(card: ModelCard, scores: FloatArray, desired: str | None, desired_range: list[float | None] | None) -> Goal:
    """The goal of a row with ``scores`` ``(k,)``: the desired class (a binary model's other class by default),
    or the desired range."""
    if card.task == "regression":
        low, high = desired_range or [None, None]
        return Goal(low=low, high=high)
    if desired is None:
        return Goal(target=1 - int(np.argmax(scores)))
    return Goal(target=card.class_names.index(desired))


def recourse_of(
    f: Callable[[FloatArray], FloatArray],
    space: Space,
    x: FloatArray,
    goal: Goal,
    *,
    k: int,
    samples: int,
    seed: int,
    row: int,
    diagnose: bool = True,
) -> Recourse:
    """Search one row (seeded by ``seed`` and its position ``row``, so rows do not depend on each other).

    Args:
        f: The model, raw-feature rows to outputs.
        space: The feasible moves.
        x: ``(d,)`` the row.
        goal: The outcome to reach.
        k: Most counterfactuals.
        samples: Sampled candidates.
        seed: The request's seed.
        row: The row's position (part of its seed).
        diagnose: When none is found, find which constraint bound hardest.
    """
    if bool(goal.reached(f(x[None, :]))[0]):
        return Recourse("already_desired", goal, x[:0].reshape(0, len(x)), 0.0)
    rng = np.random.default_rng([seed, row])
    found = find(f, space, x, goal, k=k, samples=samples, rng=rng)
    if len(found):
        return Recourse("found", goal, found, float(space.cost(x, found[:1])[0]))
    binding = binding_constraints(f, space, x, goal, samples=samples, rng=rng) if diagnose else []
    return Recourse("not_found", goal, found, None, binding)


def run_counterfactual(
    payload: dict[str, Any],
    registry: ModelRegistry,
    predictor: Predictor,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[float], None] = lambda done: None,
) -> dict[str, Any]:
    """Search counterfactuals for every row of a validated payload; return the answer JSON.

    Raises:
        InvalidRequest: ``model_changed`` when the version's content changed since the request.
        JobCanceled: ``should_stop`` said so.
    """
    started = time.perf_counter()
    model = registry.get(payload["model"], int(payload["version"]))
    if model.sha256 != payload["sha256"]:
        raise InvalidRequest("the model version changed since the request was made", code="model_changed")
    card = model.card
    session = predictor.session(model, payload["variant"])
    constraints = Constraints.parse(
        payload["constraints"], card.features, where="constraints", code="invalid_constraints"
    )
    space = build_space(card, constraints, registry.background(model))
    params = payload["parameters"]
    X = np.asarray(payload["rows"], dtype=np.float64).reshape(-1, len(card.features))

    def f(rows: FloatArray) -> FloatArray:
        if should_stop():
            raise JobCanceled("the job was canceled")
        return session.scores(np.asarray(rows, dtype=np.float64))

    scores = f(X)
    predictions = format_predictions(scores, card.class_names)
    answers: list[dict[str, Any]] = []
    diagnosed = 0
    for i, x in enumerate(X):
        goal = goal_of(card, scores[i], payload["desired"], payload["desired_range"])
        found = recourse_of(
            f,
            space,
            x,
            goal,
            k=params["k"],
            samples=params["samples"],
            seed=params["seed"],
            row=i,
            diagnose=diagnosed < DIAGNOSED_ROWS,
        )
        diagnosed += found.status == "not_found"
        # Validity is checked by a fresh model call on the answers themselves, not taken from the search.
        checked = f(found.counterfactuals) if len(found.counterfactuals) else scores[:0]
        answers.append(
            {
                "instance": dict(zip(card.feature_names, row_values(x, card), strict=True)),
                "prediction": predictions[i],
                "desired": goal.to_json(card.output_names),
                "status": found.status,
                "counterfactuals": describe(space, card, x, found.counterfactuals, checked, goal),
                "diversity": {
                    **diversity(space, found.counterfactuals),
                    "features_changed": features_changed(space, x, found.counterfactuals),
                },
                **_not_found(found, params["samples"], diagnosed <= DIAGNOSED_ROWS),
            }
        )
        on_progress((i + 1) / len(X))
    return {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256, "variant": payload["variant"]},
        "parameters": params,
        "constraints": constraints.to_dict(),
        "proximity": {
            "metric": "mad_l1",
            "scales": {
                name: float(s)
                for name, s, cat in zip(card.feature_names, space.scale, space.categorical, strict=True)
                if not cat
            },
        },
        "rows": answers,
        "provenance": {
            **_versions(),
            "provider": session.provider,
            "seed": params["seed"],
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    }


def _not_found(found: Recourse, samples: int, diagnosed: bool) -> dict[str, Any]:
    """``reason`` and ``binding_constraints`` of a row with none found (nothing otherwise)."""
    if found.status != "not_found":
        return {}
    if not diagnosed:
        reason = (
            f"no counterfactual within the search budget (samples={samples}); which constraint bound hardest "
            f"is found for the first {DIAGNOSED_ROWS} such rows of a request only: send this row alone"
        )
        return {"reason": reason, "binding_constraints": []}
    if found.binding:
        top = found.binding[0]
        reason = (
            f"no counterfactual within the search budget (samples={samples}); the {top['constraint']} constraint "
            f"on {top['feature']!r} bound hardest: lifting it alone allows one at cost {top['cost']:.4g}"
        )
    else:
        reason = (
            f"no counterfactual within the search budget (samples={samples}), even with any one constraint "
            "lifted; widen several constraints or raise samples"
        )
    return {"reason": reason, "binding_constraints": found.binding}


def _versions() -> dict[str, str]:
    out = {}
    for name in ("onnxplain", "onnxruntime", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out

"""Recourse in an audit (``"recourse": true`` or an options object in the spec): the burden of changing a decision.

For the audited rows with the unwanted outcome (any class but ``desired``, by default the positive class), the
merge searches a counterfactual (:func:`engine.recourse.counterfactual.recourse_of`, the card's constraints plus
the spec's) and records whether one exists and its cost (MAD-scaled L1). Per sensitive group it reports the share
with recourse and the median cost, and flags a column whose groups' median costs differ by more than
``max_cost_ratio`` or whose shares differ by more than ``max_share_gap``. A global surrogate (a shallow tree fitted
to the model's predictions on the audit's rows) goes beside it in the report.

Options (all optional): ``desired``, ``constraints``, ``samples`` (200), ``max_rows`` (500: a seeded sample of
the unwanted rows beyond it), ``seed`` (0), ``max_cost_ratio`` (1.25), ``max_share_gap`` (0.1),
``surrogate_depth`` (3).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from engine.errors import InvalidRequest, UnknownField
from engine.models.constraints import Constraints
from engine.models.rows import frame_to_matrix
from engine.models.store import ModelRegistry, ModelVersion
from engine.recourse.counterfactual import recourse_of
from engine.recourse.goal import Goal
from engine.recourse.space import build_space
from engine.recourse.surrogate import MAX_DEPTH, MIN_ROWS, fit_surrogate
from engine.serving import Predictor

_DEFAULTS: dict[str, Any] = {
    "samples": 200,
    "max_rows": 500,
    "seed": 0,
    "max_cost_ratio": 1.25,
    "max_share_gap": 0.1,
    "surrogate_depth": 3,
}
_BOUNDS: dict[str, tuple[float, float, bool]] = {  # name -> (minimum, maximum, integer)
    "samples": (16, 100_000, True),
    "max_rows": (1, 100_000, True),
    "seed": (0, 2**32 - 1, True),
    "max_cost_ratio": (1.0, 1e9, False),
    "max_share_gap": (0.0, 1.0, False),
    "surrogate_depth": (1, MAX_DEPTH, True),
}


def recourse_options(value: object, model: ModelVersion, positive: str | None) -> dict[str, Any] | None:
    """Validate the spec's ``recourse`` (``true``, ``false``, absent, or an options object).

    Returns:
        The options with defaults filled and the constraints merged with the card's, or ``None`` when off.

    Raises:
        InvalidRequest: A bad option, a regression model, no desired class, or no background.
        UnknownField: An unknown option.
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise InvalidRequest("recourse must be true, false or an object", code="invalid_parameter", field="recourse")
    card = model.card
    for key in value:
        if key not in _DEFAULTS and key not in ("desired", "constraints"):
            known = ", ".join(["desired", "constraints", *_DEFAULTS])
            raise UnknownField(f"unknown recourse option {key!r}; known: {known}", field=f"recourse.{key}")
    if card.task != "classification":
        raise InvalidRequest("recourse in audits needs a classifier", code="method_not_applicable", field="recourse")
    if model.background_rows == 0:
        raise InvalidRequest(
            "recourse needs the model's background rows (ranges, scales); register it with a 'background' part",
            code="background_required",
            field="recourse",
        )
    desired = value.get("desired", positive)
    if desired is None:
        raise InvalidRequest(
            "name the wanted class in recourse.desired (or the audit's positive)",
            code="positive_required",
            field="recourse.desired",
        )
    if desired not in card.class_names:
        raise InvalidRequest(
            f"{desired!r} is not a class of the model: {list(card.class_names)}",
            code="unknown_target",
            field="recourse.desired",
        )
    constraints = card.constraints.merged(
        Constraints.parse(
            value.get("constraints"), card.features, where="recourse.constraints", code="invalid_constraints"
        )
    )
    out: dict[str, Any] = {"desired": desired, "constraints": constraints.to_dict()}
    for name, default in _DEFAULTS.items():
        number = value.get(name, default)
        low, high, integer = _BOUNDS[name]
        kind_ok = isinstance(number, int) if integer else isinstance(number, int | float)
        if isinstance(number, bool) or not kind_ok or not math.isfinite(number) or not low <= number <= high:
            raise InvalidRequest(
                f"recourse.{name} must be {'an integer' if integer else 'a number'} from {low:g} to {high:g}",
                code="invalid_parameter",
                field=f"recourse.{name}",
            )
        out[name] = number
    return out


def audit_recourse(
    options: dict[str, Any],
    rows: pd.DataFrame,
    *,
    features: list[str],
    sensitive: list[str],
    model_name: str,
    version: int,
    variant: str,
    registry: ModelRegistry,
    predictor: Predictor,
) -> dict[str, Any]:
    """Recourse over an audit's explained rows, per sensitive group, with a surrogate of the model on them.

    Args:
        options: From :func:`recourse_options`.
        rows: The merged rows that were explained (``row``, ``prediction``, ``value.<f>``, ``sensitive.<s>``).
        features: Model feature names.
        sensitive: Sensitive columns.
        model_name, version, variant: The model audited.
        registry: The model store.
        predictor: Warm sessions of this process.

    Returns:
        The summary's ``recourse`` section (``openapi.yaml``'s ``AuditRecourse``).
    """
    model = registry.get(model_name, version)
    card = model.card
    session = predictor.session(model, variant)
    constraints = Constraints.parse(options["constraints"], card.features, where="recourse", code="invalid_constraints")
    space = build_space(card, constraints, np.asarray(registry.background(model)))
    values = rows[[f"value.{f}" for f in features]].set_axis(features, axis=1)
    X = frame_to_matrix(values, card, where="rows")
    desired = str(options["desired"])
    goal = Goal(target=card.class_names.index(desired))
    unwanted = np.flatnonzero(rows["prediction"].to_numpy() != desired)
    searched = unwanted
    if len(unwanted) > options["max_rows"]:
        pick = np.random.default_rng(options["seed"]).choice(len(unwanted), options["max_rows"], replace=False)
        searched = unwanted[np.sort(pick)]
    found = np.zeros(len(searched), dtype=bool)
    cost = np.full(len(searched), np.nan)
    numbers = rows["row"].to_numpy(dtype=np.int64)
    for i, position in enumerate(searched):
        result = recourse_of(
            session.scores,
            space,
            X[position],
            goal,
            k=1,
            samples=int(options["samples"]),
            seed=int(options["seed"]),
            row=int(numbers[position]),
            diagnose=False,
        )
        found[i] = result.status == "found"
        cost[i] = result.cost if result.cost is not None else np.nan
    groups = {
        column: _by_group(rows[f"sensitive.{column}"].to_numpy()[searched], found, cost, options)
        for column in sensitive
    }
    surrogate = None
    if len(X) >= MIN_ROWS:
        surrogate = fit_surrogate(card, X, session.scores, depth=int(options["surrogate_depth"]))
        surrogate["rows"] = "audit"
    return {
        "desired": desired,
        "constraints": options["constraints"],
        "thresholds": {k: options[k] for k in ("max_cost_ratio", "max_share_gap")},
        "metric": "mad_l1",
        "rows_unwanted": int(len(unwanted)),
        "rows_searched": int(len(searched)),
        "overall": _stats(found, cost),
        "groups": groups,
        "flagged": sorted(column for column, view in groups.items() if view["flags"]),
        "rows": [
            {"row": int(numbers[p]), "found": bool(ok), "cost": None if np.isnan(c) else float(c)}
            for p, ok, c in zip(searched, found, cost, strict=True)
        ],
        "surrogate": surrogate,
    }


def _stats(found: np.ndarray, cost: np.ndarray) -> dict[str, Any]:
    n = int(len(found))
    with_recourse = int(found.sum())
    costs = cost[found]
    return {
        "rows": n,
        "with_recourse": with_recourse,
        "share_with_recourse": with_recourse / n if n else None,
        "median_cost": float(np.median(costs)) if costs.size else None,
        "mean_cost": float(np.mean(costs)) if costs.size else None,
    }


def _by_group(group: np.ndarray, found: np.ndarray, cost: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
    """Per group of one sensitive column, and the flags when groups differ beyond the thresholds."""
    names = sorted({str(g) for g in group})
    labels = np.array([str(g) for g in group])
    stats = {name: _stats(found[labels == name], cost[labels == name]) for name in names}
    medians = [s["median_cost"] for s in stats.values() if s["median_cost"] is not None]
    shares = [s["share_with_recourse"] for s in stats.values() if s["share_with_recourse"] is not None]
    ratio = max(medians) / min(medians) if len(medians) >= 2 and min(medians) > 0 else None
    gap = max(shares) - min(shares) if len(shares) >= 2 else None
    flags = []
    if ratio is not None and ratio > options["max_cost_ratio"]:
        flags.append("median_cost_ratio")
    if gap is not None and gap > options["max_share_gap"]:
        flags.append("share_gap")
    return {"groups": stats, "median_cost_ratio": ratio, "share_gap": gap, "flags": flags}

"""The counterfactual search on a real logistic-regression ONNX model: validity, constraints, analytic minimum."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from engine.models.card import ModelCard
from engine.models.constraints import Constraints
from engine.recourse.counterfactual import recourse_of
from engine.recourse.goal import Goal
from engine.recourse.space import build_space
from tests import builders


@pytest.fixture(scope="module")
def credit() -> builders.TableModel:
    return builders.credit_logistic()


def model_fn(built: builders.BuiltModel):
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def f(X: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: np.asarray(X, dtype=np.float32)})[-1], dtype=np.float64)

    return f


CONSTRAINTS = {
    "immutable": ["sex", "age"],
    "directions": {"income": "increase_only", "debt": "decrease_only"},
    "ranges": {"income": [0, 150_000], "debt": [0, 80_000]},
    "categories": {"housing": ["rent", "mortgage"]},
}


def analytic_minimum(built: builders.TableModel, space, x: np.ndarray) -> float:
    """The cheapest move to the decision boundary of the linear logit: income up or debt down within their
    ranges (scaled by the background MAD), after keeping housing or changing it to an allowed category (cost 1).
    On a linear logit with L1 cost the optimum changes one numeric feature, so this is the exact minimum."""
    weights, bias = built.extra["logit"]
    best = np.inf
    for housing in (x[4], 0.0, 2.0):
        moved = x.copy()
        moved[4] = housing
        base = float(housing != x[4])
        z = float(weights @ moved + bias)
        if z > 0:
            best = min(best, base)
            continue
        for j, sign in ((0, 1), (1, -1)):
            delta = -z / weights[j]
            if np.sign(delta) == sign and space.low[j] <= x[j] + delta <= space.high[j]:
                best = min(best, base + abs(delta) / space.scale[j])
    return best


def test_counterfactuals_are_valid_keep_constraints_and_match_the_analytic_minimum(credit):
    card = ModelCard.from_dict(credit.card)
    constraints = Constraints.parse(CONSTRAINTS, card.features, where="constraints", code="invalid_constraints")
    space = build_space(card, constraints, credit.X[:200])
    f = model_fn(credit)
    denied = np.flatnonzero(f(credit.X[200:]).argmax(axis=1) == 0)[:6] + 200
    assert len(denied) == 6
    for row in denied:
        x = credit.X[row]
        found = recourse_of(f, space, x, Goal(target=1), k=3, samples=400, seed=0, row=int(row))
        assert found.status == "found"
        C = found.counterfactuals
        assert 1 <= len(C) <= 3
        assert np.all(f(C).argmax(axis=1) == 1), "every counterfactual reaches 'approved' through onnxruntime"
        assert np.all(C[:, [2, 3]] == x[[2, 3]]), "immutable age and sex unchanged"
        assert np.all(C[:, 0] >= x[0]) and np.all(C[:, 1] <= x[1]), "directions kept"
        assert np.all((C[:, 0] <= 150_000) & (C[:, 1] >= 0))
        assert set(C[:, 4]) <= {0.0, 2.0, x[4]}, "only allowed categories"
        assert all(not space.respects(x, c) for c in C)
        analytic = analytic_minimum(credit, space, x)
        cost = space.cost(x, C)
        assert np.isfinite(analytic)
        assert 0.99 * analytic <= cost[0] <= 1.10 * analytic
        assert np.all(np.diff(cost) >= -1e-12), "cheapest first"


def test_single_feature_moves_hit_the_analytic_boundary(credit):
    """With only income mutable, the counterfactual is the analytic boundary crossing of income."""
    card = ModelCard.from_dict(credit.card)
    constraints = Constraints.parse(
        {"immutable": ["debt", "age", "sex", "housing"], "ranges": {"income": [0, 200_000]}},
        card.features,
        where="constraints",
        code="invalid_constraints",
    )
    space = build_space(card, constraints, credit.X[:200])
    f = model_fn(credit)
    weights, bias = credit.extra["logit"]
    for row in np.flatnonzero(f(credit.X[200:260]).argmax(axis=1) == 0)[:4] + 200:
        x = credit.X[row]
        found = recourse_of(f, space, x, Goal(target=1), k=2, samples=200, seed=1, row=int(row))
        move = -(weights @ x + bias) / weights[0]
        assert found.status == "found"
        assert found.cost == pytest.approx(move / space.scale[0], rel=0.10)


def test_same_seed_same_answer(credit):
    card = ModelCard.from_dict(credit.card)
    space = build_space(card, Constraints(), credit.X[:200])
    f = model_fn(credit)
    x = credit.X[np.flatnonzero(f(credit.X[200:]).argmax(axis=1) == 0)[0] + 200]
    a = recourse_of(f, space, x, Goal(target=1), k=3, samples=300, seed=5, row=0)
    b = recourse_of(f, space, x, Goal(target=1), k=3, samples=300, seed=5, row=0)
    np.testing.assert_array_equal(a.counterfactuals, b.counterfactuals)


def test_impossible_constraints_say_not_found_and_what_bound_hardest(credit):
    """With income and debt frozen, no allowed move approves a clearly denied row; lifting income's
    immutability would, and the answer says so."""
    card = ModelCard.from_dict(credit.card)
    constraints = Constraints.parse(
        {"immutable": ["income", "debt", "age", "sex", "housing"]},
        card.features,
        where="constraints",
        code="invalid_constraints",
    )
    space = build_space(card, constraints, credit.X[:200])
    f = model_fn(credit)
    scores = f(credit.X)
    row = int(np.argmin(scores[:, 1]))
    found = recourse_of(f, space, credit.X[row], Goal(target=1), k=3, samples=200, seed=0, row=row)
    assert found.status == "not_found"
    assert len(found.counterfactuals) == 0
    assert found.binding, "some constraint, lifted, allows a counterfactual"
    assert {b["feature"] for b in found.binding} <= {"income", "debt", "age", "sex", "housing"}
    assert found.binding[0]["constraint"] == "immutable"
    assert found.binding[0]["feature"] in ("income", "debt")


def test_regression_reaches_the_desired_range(regression_model):
    card = ModelCard.from_dict(regression_model.card)
    space = build_space(card, Constraints(), regression_model.X[:100])
    f = model_fn(regression_model)
    x = regression_model.X[150]
    y = float(f(x[None])[0, 0])
    goal = Goal(low=y + 20.0, high=y + 40.0)
    found = recourse_of(f, space, x, goal, k=3, samples=300, seed=0, row=0)
    assert found.status == "found"
    values = f(found.counterfactuals)[:, 0]
    assert np.all((values >= y + 20.0) & (values <= y + 40.0))


def test_request_constraints_add_to_the_card_and_any_lifts_a_direction(credit):
    card = ModelCard.from_dict(
        {**credit.card, "constraints": {"immutable": ["sex"], "directions": {"income": "increase_only"}}}
    )
    request = Constraints.parse(
        {"immutable": ["age"], "directions": {"income": "any", "debt": "decrease_only"}},
        card.features,
        where="constraints",
        code="invalid_constraints",
    )
    merged = card.constraints.merged(request)
    assert merged.immutable == {"sex", "age"}
    assert merged.directions == {"debt": "decrease_only"}
    assert ModelCard.from_dict(card.to_dict()).constraints == card.constraints

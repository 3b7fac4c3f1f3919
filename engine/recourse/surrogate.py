"""A global surrogate: a shallow decision tree fitted to the model's own predictions, with its fidelity.

The tree (scikit-learn's ``DecisionTreeClassifier`` on predicted classes, ``DecisionTreeRegressor`` on
predicted values) is fitted on a seeded 70 % of the rows and its fidelity to the model (accuracy, or R²) measured
on the other 30 %. The answer gives the rules as text (``sklearn.tree.export_text``) and the tree as nodes, so a
reader can apply it. A model version's surrogate over its background is computed once and kept beside the
version (``surrogate/depth-<n>.json``); categorical features are split on their category codes (listed).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import InvalidRequest
from engine.files import write_atomic
from engine.models.card import ModelCard
from engine.models.store import ModelRegistry, ModelVersion
from engine.serving import Predictor
from engine.timestamps import utc_now

DEFAULT_DEPTH = 3
MAX_DEPTH = 8
HELD_OUT = 0.3
MIN_ROWS = 10
"""Fewest rows a surrogate is fitted on (a third of them are held out)."""


def surrogate_path(model: ModelVersion, depth: int) -> Path:
    """Where a model version's surrogate of ``depth`` is kept."""
    return model.path / "surrogate" / f"depth-{depth}.json"


def read_surrogate(model: ModelVersion, depth: int) -> dict[str, Any] | None:
    """The kept surrogate of a model version, or ``None`` when not yet computed."""
    path = surrogate_path(model, depth)
    if not path.exists():
        return None
    found: dict[str, Any] = json.loads(path.read_text())
    return found


def write_surrogate(model: ModelVersion, depth: int, surrogate: dict[str, Any]) -> None:
    """Keep a model version's surrogate (atomically: readers never see half of it)."""
    path = surrogate_path(model, depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(surrogate))


def fit_surrogate(
    card: ModelCard, X: FloatArray, f: Callable[[FloatArray], FloatArray], *, depth: int, seed: int = 0
) -> dict[str, Any]:
    """Fit a tree of ``depth`` to the model's predictions on rows ``X``; return it with its fidelity as JSON.

    Raises:
        InvalidRequest: ``too_few_rows`` when ``X`` has fewer than :data:`MIN_ROWS` rows.
    """
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, export_text

    if len(X) < MIN_ROWS:
        raise InvalidRequest(
            f"a surrogate needs at least {MIN_ROWS} rows; there are {len(X)}", code="too_few_rows", field="background"
        )
    scores = f(X)
    classifier = card.task == "classification"
    y = np.argmax(scores, axis=1) if classifier else scores[:, 0]
    order = np.random.default_rng(seed).permutation(len(X))
    cut = len(X) - max(1, int(round(HELD_OUT * len(X))))
    train, held_out = np.sort(order[:cut]), np.sort(order[cut:])
    tree: Any = (DecisionTreeClassifier if classifier else DecisionTreeRegressor)(max_depth=depth, random_state=seed)
    tree.fit(X[train], y[train])
    names = card.feature_names
    if classifier:
        metric = "accuracy"
        held, fitted = (
            accuracy_score(y[held_out], tree.predict(X[held_out])),
            accuracy_score(y[train], tree.predict(X[train])),
        )
        classes = [card.class_names[int(c)] for c in tree.classes_]
        rules = export_text(tree, feature_names=names, class_names=classes, decimals=4)
    else:
        metric = "r2"
        held, fitted = r2_score(y[held_out], tree.predict(X[held_out])), r2_score(y[train], tree.predict(X[train]))
        classes = []
        rules = export_text(tree, feature_names=names, decimals=4)
    return {
        "kind": "classifier" if classifier else "regressor",
        "max_depth": depth,
        "depth": int(tree.get_depth()),
        "leaves": int(tree.get_n_leaves()),
        "fidelity": {
            "metric": metric,
            "held_out": float(held),
            "train": float(fitted),
            "rows": {"train": int(len(train)), "held_out": int(len(held_out))},
        },
        "held_out_rows": held_out.tolist(),
        "rules": rules,
        "nodes": _nodes(tree, names, classes),
        "categories": {f.name: list(f.categories) for f in card.features if f.categories},
        "seed": seed,
        "computed_at": utc_now(),
    }


def _nodes(tree: Any, names: list[str], classes: list[str]) -> list[dict[str, Any]]:
    """The tree as nodes: a split ``{feature, threshold, left, right}`` (left when ``value <= threshold``) or a
    leaf ``{value}`` (the class name, or the mean predicted value)."""
    t = tree.tree_
    out: list[dict[str, Any]] = []
    for i in range(t.node_count):
        if t.children_left[i] == -1:
            value = t.value[i][0]
            out.append({"leaf": True, "value": classes[int(np.argmax(value))] if classes else float(value[0])})
        else:
            out.append(
                {
                    "leaf": False,
                    "feature": names[int(t.feature[i])],
                    "threshold": float(t.threshold[i]),
                    "left": int(t.children_left[i]),
                    "right": int(t.children_right[i]),
                }
            )
    return out


def compute_surrogate(payload: dict[str, Any], registry: ModelRegistry, predictor: Predictor) -> dict[str, Any]:
    """Fit the surrogate a payload names (``model``, ``version``, ``sha256``, ``max_depth``) over the version's
    background, keep it beside the version and return it.

    Raises:
        InvalidRequest: ``model_changed`` when the version's content changed since the request.
    """
    model = registry.get(payload["model"], int(payload["version"]))
    if model.sha256 != payload["sha256"]:
        raise InvalidRequest("the model version changed since the surrogate was requested", code="model_changed")
    depth = int(payload["max_depth"])
    session = predictor.session(model)
    found = fit_surrogate(model.card, np.asarray(registry.background(model)), session.scores, depth=depth)
    result = {
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256, "variant": "fp32"},
        "rows": "background",
        **found,
    }
    write_surrogate(model, depth, result)
    return result

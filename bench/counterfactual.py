"""Counterfactual-search benchmark: our search against plain random search at the same model budget.

Run from the repository root (well under a minute on 2 cores)::

    .venv/bin/python bench/counterfactual.py

The model is the test suite's logistic-regression credit model (income, debt, age, sex, housing; skl2onnx),
so the cheapest counterfactual is known in closed form: a single move of income (up) or debt (down) to the
linear boundary, in MAD-scaled L1 (sex and age immutable, housing kept too so the closed form is exact).
30 denied rows of held-out data, one onnxruntime session (1 intra-op thread).

* **onnxplain**: :func:`engine.recourse.counterfactual.recourse_of` (``k=3``, ``samples=1000``), as a worker
  runs it; its model rows are counted.
* **random search** (what a sampling-only method such as DiCE's ``random`` does, without its pandas
  overhead): as many candidates as onnxplain evaluated, each changing 1-2 mutable features to values drawn
  from the background within the constraints; the cheapest valid one is kept.

Reported: cost of the best counterfactual over the closed-form minimum (1.00 is optimal), how often one was
found, features changed, model rows and milliseconds per row (medians).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.models.card import ModelCard  # noqa: E402
from engine.models.constraints import Constraints  # noqa: E402
from engine.recourse.counterfactual import recourse_of  # noqa: E402
from engine.recourse.goal import Goal  # noqa: E402
from engine.recourse.space import build_space  # noqa: E402
from tests import builders  # noqa: E402


def main() -> None:
    credit = builders.credit_logistic()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(credit.onnx_bytes, options, providers=["CPUExecutionProvider"])
    port = session.get_inputs()[0].name
    counted = [0]

    def f(X: np.ndarray) -> np.ndarray:
        counted[0] += len(X)
        return np.asarray(session.run(None, {port: np.asarray(X, dtype=np.float32)})[-1], dtype=np.float64)

    card = ModelCard.from_dict(credit.card)
    constraints = Constraints.parse(
        {"immutable": ["sex", "age", "housing"], "ranges": {"income": [0, 200_000], "debt": [0, 100_000]}},
        card.features,
        where="constraints",
        code="invalid_constraints",
    )
    space = build_space(card, constraints, credit.X[:100])
    rows = builders.credit_rows(400, np.random.default_rng(3))
    rows = rows[f(rows).argmax(axis=1) == 0][:30]
    weights, bias = credit.extra["logit"]
    goal = Goal(target=1)
    ours: dict[str, list[float]] = {"ratio": [], "found": [], "changed": [], "rows": [], "ms": []}
    base: dict[str, list[float]] = {"ratio": [], "found": [], "changed": [], "rows": [], "ms": []}
    rng = np.random.default_rng(0)
    for i, x in enumerate(rows):
        z = float(weights @ x + bias)
        best = min(-z / weights[0] / space.scale[0], z / weights[1] / space.scale[1])
        counted[0] = 0
        started = time.perf_counter()
        found = recourse_of(f, space, x, goal, k=3, samples=1000, seed=0, row=i)
        ours["ms"].append((time.perf_counter() - started) * 1000)
        budget = counted[0]
        ours["rows"].append(budget)
        ours["found"].append(float(found.status == "found"))
        if found.cost is not None:
            ours["ratio"].append(found.cost / best)
            ours["changed"].append(float(np.sum(found.counterfactuals[0] != x)))
        started = time.perf_counter()
        C = np.repeat(x[None], budget, axis=0)
        for j in (0, 1):
            pick = rng.random(budget) < 0.6
            low, high = space.interval(x, j)
            C[pick, j] = np.clip(space.background[rng.integers(0, len(space.background), budget), j], low, high)[pick]
        valid = C[f(C).argmax(axis=1) == 1]
        base["ms"].append((time.perf_counter() - started) * 1000)
        base["rows"].append(budget)
        base["found"].append(float(len(valid) > 0))
        if len(valid):
            cost = space.cost(x, valid)
            base["ratio"].append(float(cost.min()) / best)
            base["changed"].append(float(np.sum(valid[int(np.argmin(cost))] != x)))
    print(f"{len(rows)} denied rows; cost of the best counterfactual / closed-form minimum (1.00 = optimal)")
    print(f"{'search':<14}{'cost ratio':>11}{'worst':>8}{'found':>7}{'changed':>9}{'rows':>8}{'ms/row':>8}")
    for name, r in (("onnxplain", ours), ("random", base)):
        print(
            f"{name:<14}{statistics.median(r['ratio']):>11.4f}{max(r['ratio']):>8.3f}{statistics.mean(r['found']):>7.2f}"
            f"{statistics.median(r['changed']):>9.1f}{statistics.median(r['rows']):>8.0f}{statistics.median(r['ms']):>8.1f}"
        )


if __name__ == "__main__":
    main()

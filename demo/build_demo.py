"""Build the demo model shipped with onnxplain: a small credit-approval classifier.

Run from the repository root: ``.venv/bin/python demo/build_demo.py``. It
writes ``credit.onnx``, ``card.json``, ``background.csv``, ``example.json``
and ``applicants.csv`` (the README's audit example: 2,000 applicants with
their ``outcome`` kept as 0/1, as scikit-learn users keep labels, and the
sensitive columns ``sex`` and ``age_band``) beside this file. The data are synthetic.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingClassifier

HERE = Path(__file__).resolve().parent
FEATURES = ["income", "debt_ratio", "age", "years_employed", "open_loans", "late_payments"]


def main() -> None:
    X, y = applicants(np.random.default_rng(7), 2000)
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(X, y)
    onx = to_onnx(
        model, X[:1].astype(np.float32), options={id(model): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3}
    )
    (HERE / "credit.onnx").write_bytes(onx.SerializeToString())
    card = {
        "name": "credit",
        "task": "classification",
        "features": FEATURES,
        "class_names": ["denied", "approved"],
        "description": "Synthetic credit approval: gradient-boosted trees (demo).",
    }
    (HERE / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    frame = pd.DataFrame(X[:200], columns=FEATURES).round(4)
    frame.to_csv(HERE / "background.csv", index=False)
    example = {k: round(float(v), 2) for k, v in zip(FEATURES, X[1234], strict=True)}
    (HERE / "example.json").write_text(json.dumps(example) + "\n")
    write_applicants()


def write_applicants() -> None:
    """Write ``applicants.csv``: new applicants (another seed) with a 0/1 outcome and two sensitive columns."""
    rng = np.random.default_rng(11)
    X, y = applicants(rng, 2000)
    frame = pd.DataFrame(X, columns=FEATURES).round(4)
    frame["sex"] = rng.choice(["F", "M"], len(frame))
    frame["age_band"] = pd.cut(frame["age"], [0, 30, 50, 200], labels=["<30", "30-49", "50+"]).astype(str)
    frame["outcome"] = y
    frame.to_csv(HERE / "applicants.csv", index=False)


def applicants(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic applicants and whether they repaid (1) or not (0)."""
    X = np.column_stack(
        [
            rng.lognormal(10.8, 0.5, n),
            rng.uniform(0, 0.9, n),
            rng.integers(19, 75, n),
            rng.integers(0, 30, n),
            rng.poisson(2, n),
            rng.poisson(0.5, n),
        ]
    ).astype(np.float64)
    logit = 0.00004 * (X[:, 0] - 50000) - 4 * (X[:, 1] - 0.4) + 0.05 * X[:, 3] - 0.8 * X[:, 5]
    y = (logit + rng.normal(0, 0.7, n) > 0).astype(int)
    return X, y


if __name__ == "__main__":
    main()

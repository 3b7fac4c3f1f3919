"""Build the demo model shipped with onnxplain: a small credit-approval classifier.

Run from the repository root: ``.venv/bin/python demo/build_demo.py``. It
writes ``credit.onnx``, ``card.json``, ``background.csv`` and
``example.json`` beside this file. The data are synthetic.
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
    rng = np.random.default_rng(7)
    n = 2000
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


if __name__ == "__main__":
    main()

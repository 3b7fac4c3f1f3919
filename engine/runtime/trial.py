"""The child process of :func:`engine.models.probe.probe_model`: load an untrusted model once and try it.

Run as ``python -m engine.runtime.trial`` with the request (path, card, signature, call time limit) as JSON on
stdin; prints one JSON line, ``{"ok": true}`` or ``{"ok": false, "code", "message"}``. A crash shows as no line
at all. The rows tried are zeros, a background sample and boundary rows (:func:`trial_rows`), so a model whose
memory or time comes from its input shows it here, under the child's caps, before it is served.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from engine.errors import OnnxplainError
from engine.models.card import ModelCard
from engine.models.screening import Signature

LARGE = 1e6
"""Magnitude of the large boundary rows: far outside any scaled feature, well inside float32."""


def trial_rows(card: ModelCard, background: Any | None) -> tuple[Any, Any]:
    """Return the trial's ordinary rows (zeros, background sample) and its boundary rows.

    Boundary rows put each numeric feature, one at a time and all at once, at the background's min and max
    and at ±:data:`LARGE`; categorical features keep valid codes (first and last category).
    """
    import numpy as np

    d = len(card.features)
    ordinary = [np.zeros((2, d))]
    if background is not None and len(background):
        ordinary.append(background[:64])
    numeric = np.array([f.type != "categorical" for f in card.features])
    last = np.array([len(f.categories) - 1 if f.type == "categorical" else 0 for f in card.features], dtype=float)
    edges = [np.full(d, LARGE), np.full(d, -LARGE)]
    if background is not None and len(background):
        edges = [background.min(axis=0), background.max(axis=0), *edges]
    boundary = []
    for edge in edges:
        boundary.append(np.where(numeric, edge, last))
        for j in np.flatnonzero(numeric):
            single = np.zeros(d)
            single[j] = edge[j]
            boundary.append(single)
    return np.concatenate(ordinary), np.asarray(boundary, dtype=np.float64)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    # Imported here so a crash in onnxruntime's import is also contained.
    import numpy as np
    import pandas as pd

    from engine.models.rows import frame_to_matrix
    from engine.runtime.sessions import SessionCache

    card = ModelCard.from_dict(request["card"])
    signature = Signature.from_dict(request["signature"])
    path = Path(request["path"])
    answer: dict[str, Any] = {"ok": True}
    try:
        cache = SessionCache(1, 1, ["CPUExecutionProvider"], timeout_s=float(request.get("call_timeout_s", 0)))
        session = cache.get(path, "probe", card, signature)
        if card.image is not None:
            session.scores(np.zeros((2, *card.image.shape), dtype=np.float64))
        elif card.input_kind == "text":
            session.scores(["a trial text", "another one"])
        else:
            background = None
            if (path.parent / "background.parquet").exists():
                stored = pd.read_parquet(path.parent / "background.parquet")
                background = frame_to_matrix(stored, card, where="background")
            ordinary, boundary = trial_rows(card, background)
            for rows in (ordinary, *boundary[:, None, :]):
                try:
                    session.scores(rows)
                except OnnxplainError as exc:
                    # A model may legitimately be undefined (NaN) at some inputs.
                    if exc.code != "non_finite_model_output":
                        raise
    except OnnxplainError as exc:
        code = "card_mismatch" if exc.code == "card_mismatch" else "invalid_model"
        answer = {"ok": False, "code": code, "message": f"the trial run failed: {exc.detail}"}
    print(json.dumps(answer))


if __name__ == "__main__":
    _main()

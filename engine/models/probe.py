"""First load of an untrusted model, in a resource-limited child process.

A hostile or broken model can crash onnxruntime (segfault), exhaust memory
or spin. The API therefore never loads an upload in its own process first:
:func:`probe_model` starts ``python -m engine.models.probe`` with an address-space
cap and a timeout, which creates a session, runs one row through the graph
and checks the explained output against the card.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from engine.errors import ModelRejected
from engine.models.card import ModelCard
from engine.models.screening import Signature

_ROOT = Path(__file__).resolve().parents[2]


def probe_model(path: Path, card: ModelCard, signature: Signature, *, timeout_s: float, memory_bytes: int) -> None:
    """Load and run the model at ``path`` in a child process.

    Raises:
        ModelRejected: ``invalid_model`` when the runtime cannot load or run
            it, crashes or times out; ``card_mismatch`` when its output does
            not fit the card.
    """

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    # Each call gets half the budget, so a slow call answers model_time_limit before the child is killed.
    payload = json.dumps(
        {"path": str(path), "card": card.to_dict(), "signature": signature.to_dict(), "call_timeout_s": timeout_s / 2}
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine.models.probe"],
            input=payload.encode(),
            capture_output=True,
            timeout=timeout_s,
            preexec_fn=limit,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelRejected(
            f"loading the model took longer than {timeout_s:g} s", code="invalid_model", field="model"
        ) from exc
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        reason = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        raise ModelRejected(
            f"onnxruntime crashed while loading the model ({reason})", code="invalid_model", field="model"
        ) from None
    if not answer.get("ok"):
        raise ModelRejected(answer["message"], code=answer["code"], field=answer.get("field", "model"))


LARGE = 1e6
"""Magnitude of the large boundary rows: far outside any scaled feature, well inside float32."""


def trial_rows(card: ModelCard, background: Any | None) -> tuple[Any, Any]:
    """Return the trial's ordinary rows (zeros, background sample) and its boundary rows.

    Boundary rows put each numeric feature, one at a time and all at once, at the background's min and max
    and at ±:data:`LARGE`; categorical features keep valid codes (first and last category). A model whose
    shapes or loop counts come from its input shows its cost here, before it is served.
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
        row = np.where(numeric, edge, last)
        boundary.append(row)
        for j in np.flatnonzero(numeric):
            single = np.zeros(d)
            single[j] = edge[j]
            boundary.append(single)
    return np.concatenate(ordinary), np.asarray(boundary, dtype=np.float64)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    # Imported here so a crash in onnxruntime's import is also contained.
    import pandas as pd

    from engine.errors import OnnxplainError
    from engine.models.rows import frame_to_matrix
    from engine.runtime.sessions import SessionCache

    card = ModelCard.from_dict(request["card"])
    signature = Signature.from_dict(request["signature"])
    path = Path(request["path"])
    background = None
    if (path.parent / "background.parquet").exists():
        background = frame_to_matrix(pd.read_parquet(path.parent / "background.parquet"), card, where="background")
    ordinary, boundary = trial_rows(card, background)
    answer: dict[str, Any] = {"ok": True}
    try:
        cache = SessionCache(1, 1, ["CPUExecutionProvider"], timeout_s=float(request.get("call_timeout_s", 0)))
        session = cache.get(path, "probe", card, signature)
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

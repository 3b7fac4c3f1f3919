"""The child process of :func:`engine.models.probe.probe_model`: load an untrusted model once, run one row.

Run as ``python -m engine.runtime.trial`` with the request (path, card, signature) as JSON on stdin; prints one
JSON line, ``{"ok": true}`` or ``{"ok": false, "code", "message"}``. A crash shows as no line at all.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.errors import OnnxplainError
from engine.models.card import ModelCard
from engine.models.screening import Signature


def _main() -> None:
    request = json.loads(sys.stdin.read())
    # Imported here so a crash in onnxruntime's import is also contained.
    import numpy as np

    from engine.runtime.sessions import SessionCache

    card = ModelCard.from_dict(request["card"])
    signature = Signature.from_dict(request["signature"])
    try:
        cache = SessionCache(1, 1, ["CPUExecutionProvider"])
        session = cache.get(Path(request["path"]), "probe", card, signature)
        session.scores(np.zeros((2, len(card.features)), dtype=np.float64))
    except OnnxplainError as exc:
        if exc.code == "non_finite_model_output":
            # A model may legitimately be undefined at all-zero input.
            print(json.dumps({"ok": True}))
            return
        code = "card_mismatch" if exc.code == "card_mismatch" else "invalid_model"
        answer = {"ok": False, "code": code, "message": exc.detail}
    else:
        answer = {"ok": True}
    print(json.dumps(answer))


if __name__ == "__main__":
    _main()

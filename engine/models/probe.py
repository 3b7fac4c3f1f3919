"""First load of an untrusted model, in a resource-limited child process.

A hostile or broken model can crash onnxruntime (segfault), exhaust memory
or spin. The API therefore never loads an upload in its own process first:
:func:`probe_model` starts ``python -m engine.runtime.trial`` with an address-space
cap and a timeout, which creates a session, runs trial rows (zeros, background, boundary rows) through the graph
and checks the explained output against the card. This module only starts the
child and reads its answer, so the models wing needs nothing of the runtime.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

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
            [sys.executable, "-m", "engine.runtime.trial"],
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

"""Job functions: plain dict in, plain dict out; errors propagate to RQ.

Only the functions listed in :data:`JOBS` are meant to be enqueued; the API
names them by dotted path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rq import get_current_job

from engine.explanation import ExplainRequest, run_explanation
from worker.context import context

CANCEL_KEY = "onnxplain:cancel:{}"
_CHECK_EVERY_S = 0.25


def cancel_flag() -> Callable[[], bool]:
    """Return a cheap check of the current job's cancel flag (at most one Redis read per 250 ms)."""
    job = get_current_job()
    if job is None:
        return lambda: False
    key = CANCEL_KEY.format(job.id)
    last = [0.0, False]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last[0] >= _CHECK_EVERY_S:
            last[0], last[1] = now, bool(job.connection.exists(key))
        return bool(last[1])

    return should_stop


def explain(payload: dict[str, Any]) -> dict[str, Any]:
    """Explain rows of a stored model; return the attribution JSON."""
    ctx = context()
    job = get_current_job()
    result = run_explanation(
        ExplainRequest.from_payload(payload), ctx.registry, ctx.predictor, should_stop=cancel_flag()
    )
    if job is not None:
        result["provenance"]["worker"] = job.worker_name or "unknown"
    return result


JOBS = {"worker.jobs.explain": explain}

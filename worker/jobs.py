"""Job functions: plain dict in, plain dict out; errors propagate to RQ.

Only the functions listed in :data:`JOBS` are meant to be enqueued; the API
names them by dotted path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rq import get_current_job

from engine.errors import InvalidRequest
from engine.explain.run import ExplainRequest, run_explanation
from engine.variants import state as variants
from worker import audits
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


def build_variant(payload: dict[str, Any]) -> dict[str, Any]:
    """Build, measure and gate a quantized variant; return its state document."""
    ctx = context()
    model = ctx.registry.get(payload["model"], payload["version"])
    if model.sha256 != payload["sha256"]:
        raise InvalidRequest("the model version changed since the variant was requested", code="model_changed")
    return variants.build(model, payload["kind"], ctx.registry.background(model), ctx.settings)


JOBS = {
    "worker.jobs.explain": explain,
    "worker.jobs.build_variant": build_variant,
    "worker.audits.chunk": audits.chunk,
    "worker.audits.merge": audits.merge,
}

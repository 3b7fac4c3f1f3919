"""Job functions: plain dict in, plain dict out; errors propagate to RQ.

Each is listed by dotted path in :data:`engine.jobs.JOBS`; a worker runs no other function. Audits run as one
``audit_chunk`` per chunk of rows (``Retry(max=2)``) and an ``audit_merge`` that depends on every chunk with
``allow_failure``, so it runs however the chunks end; the work itself is in :mod:`engine.audits.chunks`.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from engine.audits.chunks import explain_chunk, finish_audit
from engine.audits.store import AuditStore
from engine.errors import InvalidRequest
from engine.explain.plan import ExplainRequest
from engine.explain.run import run_explanation
from engine.jobs import CANCELED, CHUNK_LOST, JobError, JobSerializer, MetaKey, cancel_key, job_error, read_job_error
from engine.recourse.counterfactual import run_counterfactual
from engine.recourse.surrogate import compute_surrogate
from engine.timestamps import utc_now
from engine.variants.build import build
from worker.cancel import cancel_flag
from worker.context import context
from worker.observe import METHOD, observed


@observed
def explain(payload: dict[str, Any]) -> dict[str, Any]:
    """Explain rows of a stored model; return the attribution JSON (the typed result becomes JSON here)."""
    ctx = context()
    job = get_current_job()
    explanation = run_explanation(
        ExplainRequest.from_payload(payload), ctx.registry, ctx.predictor, should_stop=cancel_flag()
    )
    result = explanation.to_json()
    if job is not None:
        result["provenance"]["worker"] = job.worker_name or "unknown"
    return result


@observed
def counterfactual(payload: dict[str, Any]) -> dict[str, Any]:
    """Search counterfactuals of rows of a stored model; return the answer JSON, progress in ``job.meta``."""
    ctx = context()
    job = get_current_job()

    def progress(done: float) -> None:
        if job is not None:
            job.meta[MetaKey.PROGRESS] = done
            job.save_meta()

    result = run_counterfactual(payload, ctx.registry, ctx.predictor, should_stop=cancel_flag(), on_progress=progress)
    if job is not None:
        result["provenance"]["worker"] = job.worker_name or "unknown"
    return result


@observed
def surrogate(payload: dict[str, Any]) -> dict[str, Any]:
    """Fit a model version's global surrogate over its background, keep it beside the version, return it."""
    ctx = context()
    return compute_surrogate(payload, ctx.registry, ctx.predictor)


@observed
def build_variant(payload: dict[str, Any]) -> dict[str, Any]:
    """Build, measure and gate a quantized or pruned variant; return its state document."""
    ctx = context()
    model = ctx.registry.get(payload["model"], payload["version"])
    if model.sha256 != payload["sha256"]:
        raise InvalidRequest("the model version changed since the variant was requested", code="model_changed")
    background = ctx.registry.background(model)
    return build(model, payload["kind"], background, ctx.settings, payload.get("sparsity")).to_dict()


@observed
def audit_chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Explain rows ``start..stop-1`` of an audit into its chunk file; report rows done in ``job.meta``."""
    ctx = context()
    audit = AuditStore(ctx.settings.audit_dir).open(payload["audit"])
    METHOD.set(str(audit.spec.request.get("method", "auto")))
    audit.mark_started(utc_now())
    job = get_current_job()

    def progress(done: int) -> None:
        if job is not None:
            job.meta[MetaKey.ROWS_DONE] = done
            job.save_meta()

    rows = explain_chunk(
        audit,
        int(payload["start"]),
        int(payload["stop"]),
        ctx.registry,
        ctx.predictor,
        should_stop=cancel_flag(),
        on_progress=progress,
    )
    return {"audit": audit.id, "start": payload["start"], "stop": payload["stop"], "rows": rows}


@observed
def audit_merge(payload: dict[str, Any]) -> dict[str, Any]:
    """Merge the chunks into rows, summary and report; a chunk without results is reported failed."""
    ctx = context()
    audit = AuditStore(ctx.settings.audit_dir).open(payload["audit"])
    if audit.canceled() is not None:
        return {"audit": audit.id, "state": "canceled"}
    job = get_current_job()
    failures: dict[int, JobError] = {}
    if job is not None:
        for start, _ in audit.chunks:
            if not audit.has_chunk(start):
                failures[start] = _chunk_error(job, audit.chunk_job(start))
    state = finish_audit(
        audit,
        failures,
        worker=(job.worker_name or "") if job is not None else "",
        registry=ctx.registry,
        predictor=ctx.predictor,
    )
    return {"audit": audit.id, "state": state["state"], "failed_rows": state["failed_rows"]}


def _chunk_error(merge_job: Job, job_id: str) -> JobError:
    """Why a chunk left no results: its recorded error, its cancellation, or its absence."""
    try:
        job = Job.fetch(job_id, connection=merge_job.connection, serializer=JobSerializer)
    except NoSuchJobError:
        return job_error(CHUNK_LOST, message=f"job {job_id} no longer exists")
    status = job.get_status()
    if status in (JobStatus.CANCELED, JobStatus.STOPPED) or merge_job.connection.exists(cancel_key(job_id)):
        return job_error(CANCELED, message="the chunk was canceled")
    result = job.latest_result()
    return read_job_error(
        job.get_meta().get(MetaKey.ERROR),
        result.exc_string if result is not None else None,
        fallback=f"the chunk ended {status}",
    )

"""Audit jobs: one per chunk of rows (``batch`` queue), and the merge that runs after all of them.

The API enqueues ``worker.audits.chunk`` once per chunk (``Retry(max=2)``) and ``worker.audits.merge`` depending
on every chunk with ``allow_failure``, so the merge runs however the chunks end. The work itself is in
:mod:`engine.audits.chunks`; here are the RQ parts: progress in ``job.meta``, the cancel flag, and the errors of
chunks that ended without results.
"""

from __future__ import annotations

from typing import Any

from rq import get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.audits.chunks import explain_chunk, finish_audit
from engine.audits.store import AuditStore
from engine.timestamps import utc_now
from worker.context import context


def chunk(payload: dict[str, Any]) -> dict[str, Any]:
    """Explain rows ``start..stop-1`` of an audit into its chunk file; report rows done in ``job.meta``."""
    from worker.jobs import cancel_flag  # worker.jobs lists this module's jobs, so it imports this module first

    ctx = context()
    audit = AuditStore(ctx.settings.audit_dir).open(payload["audit"])
    audit.mark_started(utc_now())
    job = get_current_job()

    def progress(done: int) -> None:
        if job is not None:
            job.meta["rows_done"] = done
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


def merge(payload: dict[str, Any]) -> dict[str, Any]:
    """Merge the chunks into rows, summary and report; a chunk without results is reported failed."""
    ctx = context()
    audit = AuditStore(ctx.settings.audit_dir).open(payload["audit"])
    if audit.canceled() is not None:
        return {"audit": audit.id, "state": "canceled"}
    job = get_current_job()
    failures = {}
    if job is not None:
        for start, _ in audit.chunks:
            if not audit.has_chunk(start):
                failures[start] = _chunk_error(job, audit.chunk_job(start))
    state = finish_audit(audit, failures, worker=(job.worker_name or "") if job is not None else "")
    return {"audit": audit.id, "state": state["state"], "failed_rows": state["failed_rows"]}


def _chunk_error(merge_job: Job, job_id: str) -> dict[str, Any]:
    """Why a chunk left no results: its recorded error, its cancellation, or its absence."""
    from worker.jobs import CANCEL_KEY

    try:
        job = Job.fetch(job_id, connection=merge_job.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return {"code": "chunk_lost", "message": f"job {job_id} no longer exists"}
    status = job.get_status()
    if status in (JobStatus.CANCELED, JobStatus.STOPPED) or merge_job.connection.exists(CANCEL_KEY.format(job_id)):
        return {"code": "canceled", "message": "the chunk was canceled"}
    error = job.get_meta().get("error")
    if isinstance(error, dict) and "code" in error:
        return {"code": error["code"], "message": error.get("message", "")}
    result = job.latest_result()
    detail = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
    # A worker that died leaves no error of its own: RQ records the job as abandoned.
    code = "worker_lost" if detail and "Abandoned" in detail[0] else "internal_error"
    return {"code": code, "message": detail[0] if detail else f"the chunk ended {status}"}

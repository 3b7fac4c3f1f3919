"""Audits through Redis: queue the chunk and merge jobs, report progress, cancel.

An audit is files in the store (:mod:`engine.audits.store`) plus RQ jobs on the ``batch`` queue: one
``audit_chunk`` per chunk and an ``audit_merge`` that depends on all of them with ``allow_failure``, so it runs
however they end (:data:`engine.jobs.JOBS`). While the audit runs, its progress is read from the chunk jobs
(one pipelined read); once merged, from its files alone, so it outlives the jobs' TTL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import url_for
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Dependency, Job, JobStatus

from engine.audits.dataset import CheckedDataset
from engine.audits.spec import AuditSpec
from engine.audits.store import Audit, AuditStore
from engine.audits.summary import chunk_bounds
from engine.errors import Conflict, NotFound, Unavailable
from engine.jobs import AUDIT_LOST, CANCELED, JOBS, JobError, MetaKey, job_error
from engine.models.store import ModelVersion
from engine.timestamps import parse_utc, utc_now
from engine.webhooks import Delivery
from service.errors import problem_of
from service.extensions import Services
from service.gateways import webhooks
from service.gateways.jobs import IdempotencyRecords, JobGateway

_DONE, _FAILED = JobStatus.FINISHED.value, JobStatus.FAILED.value
_ENDED = {JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.CANCELED.value, JobStatus.STOPPED.value}


class AuditGateway:
    """Submit, describe and cancel audits.

    Args:
        svc: The app's services (settings, Redis).
        tenant: The caller's tenant: it submits audits, and sees and cancels only its own.
    """

    def __init__(self, svc: Services, tenant: str) -> None:
        self.tenant = tenant
        self.settings = svc.settings
        self.jobs: JobGateway = svc.jobs()
        self.store = AuditStore(svc.settings.audit_dir)

    def open(self, audit_id: str) -> Audit:
        """Return a stored audit of this tenant. Raises: NotFound ``audit_not_found`` (also another tenant's)."""
        audit = self.store.open(audit_id)
        if audit.info.get("tenant") != self.tenant:
            raise NotFound(f"no audit {audit_id!r}", code="audit_not_found", field="audit_id")
        return audit

    def recall(self, idempotency: str | None, digest: str) -> Audit | None:
        """The audit an earlier submission with this ``Idempotency-Key`` made, if it is still stored.

        Args:
            idempotency: The request's ``Idempotency-Key`` (checked), if any.
            digest: The request's digest (:func:`upload_digest`).

        Raises:
            InvalidRequest: ``idempotency_key_reused`` when the key was used for another request.
            Unavailable: Redis cannot be reached.
        """
        if idempotency is None:
            return None
        try:
            found = self._records().recall(self.tenant, idempotency, digest)
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        return self._stored(found)

    def _records(self) -> IdempotencyRecords:
        return IdempotencyRecords(self.jobs.connection, self.settings.result_ttl_s)

    def _stored(self, audit_id: str | None) -> Audit | None:
        if audit_id is None:
            return None
        try:
            return self.open(audit_id)
        except NotFound:
            return None  # deleted since: submit afresh

    def submit(
        self,
        spec: AuditSpec,
        checked: CheckedDataset,
        model: ModelVersion,
        *,
        idempotency: str | None = None,
        digest: str = "",
        callback: str | None = None,
    ) -> Audit:
        """Store the validated dataset and queue its chunks and merge (remembered under ``idempotency``).

        A concurrent submission with the same ``Idempotency-Key`` that stored its audit first wins: this one is
        canceled and the first is returned, so a retried upload makes one audit. A checked ``callback`` URL is
        posted the audit once it ends.

        Raises:
            QueueFull: The batch queue has no room for its chunks (nothing is stored).
            Unavailable: Redis cannot be reached (nothing is left behind).
        """
        size = self.settings.audit_chunk_rows
        try:
            self.jobs.check_capacity(JOBS["audit_chunk"].queue, len(chunk_bounds(len(checked.rows), size)) + 1)
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        info = {
            "spec": spec.to_dict(),
            "model": {
                "name": model.name,
                "version": model.version,
                "sha256": model.sha256,
                "variant": spec.request["variant"],
            },
            "rows": {
                "total": len(checked.rows),
                "uploaded": checked.uploaded_rows,
                "skipped": checked.bad_rows,
                "bad_cells": checked.bad_cells,
            },
            "ignored_columns": checked.ignored_columns,
            "label_encoding": checked.label_encoding,
            "chunks": chunk_bounds(len(checked.rows), size),
            "created_at": utc_now(),
            "tenant": self.tenant,
        }
        audit = self.store.create(info, checked.rows, row_group_rows=size)
        try:
            self._enqueue(audit)
            # The merge ends last (it waits on every chunk): while it is queued the model version is in use.
            self.jobs.mark_use(model.name, model.version, audit.merge_job)
        except (RedisError, Unavailable) as exc:
            self.store.delete(audit.id)
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        first = None
        if idempotency is not None:
            try:
                first = self._stored(self._records().remember(self.tenant, idempotency, digest, audit.id))
            except RedisError as exc:
                raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        if first is not None:  # a concurrent retry stored its audit first: this one is dropped
            self.cancel(audit)
            return first
        if callback is not None:
            webhooks.schedule(self.jobs.connection, Delivery.new("audit", audit.id, self.tenant, callback))
        return audit

    def _enqueue(self, audit: Audit) -> None:
        chunk, merge = JOBS["audit_chunk"], JOBS["audit_merge"]
        queue = self.jobs.queue(chunk.queue)
        common: dict[str, Any] = {
            "timeout": self.settings.batch_job_timeout_s,
            "result_ttl": self.settings.result_ttl_s,
            "failure_ttl": self.settings.failure_ttl_s,
            "retry": Retry(max=2),  # a chunk on a worker that died runs again elsewhere
        }
        chunks = [
            Queue.prepare_data(
                chunk.function,
                ({"audit": audit.id, "start": start, "stop": stop},),
                job_id=audit.chunk_job(start),
                meta={
                    MetaKey.KIND: chunk.name,
                    MetaKey.AUDIT: audit.id,
                    MetaKey.ROWS: stop - start,
                    MetaKey.TENANT: self.tenant,
                    MetaKey.REQUEST_ID: self.jobs.request_id,
                },
                **common,
            )
            for start, stop in audit.chunks
        ]
        queue.enqueue_many(chunks)
        queue.enqueue_call(
            merge.function,
            ({"audit": audit.id},),
            job_id=audit.merge_job,
            depends_on=Dependency(jobs=[c.job_id for c in chunks], allow_failure=True),
            meta={
                MetaKey.KIND: merge.name,
                MetaKey.AUDIT: audit.id,
                MetaKey.TENANT: self.tenant,
                MetaKey.REQUEST_ID: self.jobs.request_id,
            },
            **common,
        )

    def describe(self, audit: Audit) -> dict[str, Any]:
        """Return the public JSON of an audit: status, progress, times, and its summary or error."""
        info, state, canceled = audit.info, audit.state(), audit.canceled()
        total, chunks = int(info["rows"]["total"]), audit.chunks
        ended_at = None
        if canceled is not None:
            status, progress, error = "canceled", self._live(audit)[1], _error(canceled, None)
            ended_at = canceled["canceled_at"]
        elif state is not None:
            status, error, ended_at = str(state["state"]), _error(None, state), state["ended_at"]
            failed, failed_rows = len(state["failed_chunks"]), int(state["failed_rows"])
            progress = {"rows_done": total - failed_rows, "chunks_done": len(chunks) - failed, "chunks_failed": failed}
            progress["eta_s"] = 0.0 if status == "succeeded" else None
        else:
            status, progress, error = self._live(audit)
        started = audit.started()
        if status in ("queued", "running") and progress["rows_done"] and started:
            elapsed = (datetime.now(UTC) - parse_utc(started)).total_seconds()
            progress["eta_s"] = round(elapsed * (total - progress["rows_done"]) / progress["rows_done"], 1)
        base = url_for("audits.get_audit", audit_id=audit.id)
        body: dict[str, Any] = {
            "id": audit.id,
            "kind": "audit",
            "status": status,
            "title": info["spec"]["title"],
            "model": info["model"],
            "method": info["spec"]["request"]["method"],
            "parameters": info["spec"]["request"]["parameters"],
            "label": info["spec"]["label"],
            "sensitive": info["spec"]["sensitive"],
            "positive": info["spec"]["positive"],
            "variants": (info["spec"].get("compression") or {}).get("variants", []),
            "dataset": {
                "uploaded_rows": info["rows"]["uploaded"],
                "rows": total,
                "skipped_rows": info["rows"]["skipped"],
                "bad_cells": info["rows"]["bad_cells"],
                "ignored_columns": info["ignored_columns"],
                "label_encoding": info.get("label_encoding"),
            },
            "progress": {"rows_total": total, "chunks_total": len(chunks), **progress},
            "created_at": info["created_at"],
            "started_at": started,
            "ended_at": ended_at,
            "location": base,
            "links": {"rows": f"{base}/rows", "report": f"{base}/report"},
        }
        body["progress"]["fraction"] = round(body["progress"]["rows_done"] / total, 4) if total else 1.0
        if status == "succeeded":
            body["summary"] = {**(audit.summary() or {}), "label_encoding": info.get("label_encoding")}
        if error is not None:
            body["error"] = error
        return body

    def _live(self, audit: Audit) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
        """Status, progress and error of a running audit, from its jobs' status and meta (one round trip)."""
        ids = [audit.chunk_job(start) for start, _ in audit.chunks] + [audit.merge_job]
        try:
            with self.jobs.connection.pipeline(transaction=False) as pipeline:
                for job_id in ids:
                    pipeline.hmget(Job.key_for(job_id), ["status", "meta"])
                replies = pipeline.execute()
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        statuses = [s.decode() if s else None for s, _ in replies]
        rows_done = chunks_done = chunks_failed = 0
        for (start, stop), status, (_, meta) in zip(audit.chunks, statuses, replies, strict=False):
            if status == _DONE:
                rows_done, chunks_done = rows_done + stop - start, chunks_done + 1
            elif status == _FAILED:
                chunks_failed += 1
            elif status == JobStatus.STARTED.value and meta:
                rows_done += int(json.loads(meta).get(MetaKey.ROWS_DONE, 0))
        progress = {"rows_done": rows_done, "chunks_done": chunks_done, "chunks_failed": chunks_failed, "eta_s": None}
        merge = statuses[-1]
        if merge == _FAILED:
            return "failed", progress, self.jobs.error_of(self.jobs.fetch(audit.merge_job, self.tenant))
        if merge is None or (merge in _ENDED and merge != _DONE):
            detail = "the audit's jobs were lost before it was merged"
            return "failed", progress, problem_of(job_error(AUDIT_LOST, message=detail))
        running = any(s in _ENDED or s == JobStatus.STARTED.value for s in statuses)
        return ("running" if running else "queued"), progress, None

    def cancel(self, audit: Audit) -> dict[str, Any]:
        """Cancel an audit: queued chunks are dropped, running ones stop at their next model call.

        Raises:
            Conflict: ``audit_not_cancelable`` once it ended or its merge started.
        """
        if audit.canceled() is not None:
            return self.describe(audit)
        view = self.describe(audit)
        merge = self.jobs.connection.hget(Job.key_for(audit.merge_job), "status")
        if view["status"] in ("succeeded", "failed") or merge == JobStatus.STARTED.value.encode():
            raise Conflict(f"audit {audit.id} already {view['status']}", code="audit_not_cancelable")
        # Recorded first: a merge that starts meanwhile sees it and stores nothing.
        audit.mark_canceled({"canceled_at": utc_now()})
        for job_id in [audit.chunk_job(start) for start, _ in audit.chunks] + [audit.merge_job]:
            try:
                self.jobs.cancel(job_id, self.tenant)
            except (Conflict, NotFound):
                pass  # already ended, or expired: nothing left to stop
        return self.describe(audit)

    def ready(self, audit: Audit, *, report: bool) -> Audit:
        """Return the audit if its rows (or report) can be downloaded.

        Raises:
            Conflict: ``audit_not_ready`` before the merge stored them, or when canceled.
        """
        path = audit.report_path if report else audit.rows_path
        if audit.canceled() is None and path.exists():
            return audit
        status = self.describe(audit)["status"]
        what = "report" if report else "rows"
        raise Conflict(f"audit {audit.id} is {status}; it has no {what} yet", code="audit_not_ready")


def _error(canceled: dict[str, Any] | None, state: dict[str, Any] | None) -> dict[str, Any] | None:
    if canceled is not None:
        return problem_of(job_error(CANCELED, message="the audit was canceled"))
    record = JobError.from_dict(state.get("error")) if state is not None else None
    return problem_of(record) if record is not None else None

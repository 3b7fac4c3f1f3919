"""The one place where the API enqueues, reads, waits for and cancels jobs.

Jobs are enqueued by the dotted paths of the queue contract (:data:`engine.jobs.JOBS`),
so the API never imports ``worker``. Payloads and results are plain JSON (RQ's JSON
serializer, never pickle). A job's id is derived from its payload, so an
identical request finds the job (and result) that already exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.errors import Conflict, NotFound, Unavailable
from engine.jobs import CANCELED, JobError, JobKind, MetaKey, cancel_key, job_error, read_job_error
from engine.timestamps import format_utc
from service.errors import problem_of

JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

_STATUS = {
    JobStatus.CREATED: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}


def job_id_for(kind: str, payload: dict[str, Any]) -> str:
    """Return the deterministic id of a job: its kind and a hash of its payload."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{kind}-{digest[:32]}"


def _iso(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


class JobGateway:
    """Enqueue and observe jobs on Redis.

    Args:
        connection: The Redis connection.
        result_ttl: Seconds results stay readable.
        failure_ttl: Seconds failures stay readable.
    """

    def __init__(self, connection: Redis, *, result_ttl: int, failure_ttl: int) -> None:
        self.connection = connection
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl

    def queue(self, name: str) -> Queue:
        """Return the RQ queue ``name`` with the JSON serializer."""
        return Queue(name, connection=self.connection, serializer=JSONSerializer)

    def submit(self, kind: JobKind, payload: dict[str, Any], *, timeout: int, tenant: str) -> Job:
        """Enqueue a job of ``kind`` for ``tenant`` unless the tenant's identical job is queued, running or done.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        job_id = job_id_for(kind.name, {"tenant": tenant, **payload})
        try:
            try:
                existing = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
                status = existing.get_status()
                if status not in (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED) and not self._canceled(
                    job_id
                ):
                    return existing
                existing.delete()
                self.connection.delete(cancel_key(job_id))
            except NoSuchJobError:
                pass
            return self.queue(kind.queue).enqueue(
                kind.function,
                payload,
                job_id=job_id,
                job_timeout=timeout,
                result_ttl=self.result_ttl,
                failure_ttl=self.failure_ttl,
                ttl=self.result_ttl,
                retry=Retry(max=1),
                meta={MetaKey.KIND: kind.name, MetaKey.PROGRESS: 0.0, MetaKey.TENANT: tenant},
            )
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def fetch(self, job_id: str, tenant: str | None) -> Job:
        """Return a job by id.

        Args:
            job_id: The job's id.
            tenant: The caller's tenant: another tenant's job is not found. ``None`` only for the service's own
                reads of jobs it already tied to their tenant (an audit's chunks).

        Raises:
            NotFound: ``job_not_found`` for an unknown or expired id, or another tenant's job.
            Unavailable: Redis cannot be reached.
        """
        missing = NotFound(f"no job {job_id!r} (unknown or expired)", code="job_not_found", field="id")
        if not JOB_ID.match(job_id):
            raise missing
        try:
            job = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            raise missing from None
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        if tenant is not None and job.get_meta().get(MetaKey.TENANT) != tenant:
            raise missing
        return job

    def wait(self, job: Job, seconds: float) -> None:
        """Block until the job ends or ``seconds`` pass (woken by RQ's result stream, no polling)."""
        if seconds <= 0 or job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED):
            return
        try:
            job.latest_result(timeout=max(1, math.ceil(seconds)))
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def cancel(self, job_id: str, tenant: str | None) -> Job:
        """Cancel a queued job at once, or flag a running one to stop (``tenant`` as in :meth:`fetch`).

        Raises:
            NotFound: Unknown job, or another tenant's.
            Conflict: ``job_not_cancelable`` when it already ended.
        """
        job = self.fetch(job_id, tenant)
        status = job.get_status()
        if status in (JobStatus.FINISHED, JobStatus.FAILED):
            raise Conflict(f"job {job_id!r} already ended ({_STATUS[status]})", code="job_not_cancelable")
        # Workers run jobs in-process (SimpleWorker), so a running job is
        # stopped cooperatively: its model calls check this flag.
        self.connection.set(cancel_key(job_id), 1, ex=self.result_ttl)
        if status != JobStatus.STARTED and status != JobStatus.CANCELED:
            job.cancel()
        return job

    def _canceled(self, job_id: str) -> bool:
        return bool(self.connection.exists(cancel_key(job_id)))

    def describe(self, job: Job, *, location: str) -> dict[str, Any]:
        """Return the public JSON of a job: status, progress, times, result or error."""
        status = job.get_status()
        meta = job.get_meta()
        public = _STATUS.get(status, "queued") if status is not None else "queued"
        if self._canceled(job.id) and public in ("queued", "running", "failed"):
            public = "canceled"
        body: dict[str, Any] = {
            "id": job.id,
            "kind": meta.get(MetaKey.KIND, "job"),
            "status": public,
            "progress": 1.0 if public == "succeeded" else meta.get(MetaKey.PROGRESS),
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
            "location": location,
        }
        if public == "succeeded":
            body["result"] = job.return_value()
        elif public in ("failed", "canceled"):
            body["error"] = self.error_of(job, canceled=public == "canceled")
        return body

    def error_of(self, job: Job, *, canceled: bool = False) -> dict[str, Any]:
        """Return a failed job's error as a problem body, with the status the same failure answers everywhere."""
        return problem_of(self.record_of(job, canceled=canceled))

    def record_of(self, job: Job, *, canceled: bool = False) -> JobError:
        """Return why a job failed: canceled, its stored record, or what RQ noted (a worker that died)."""
        if canceled:
            return job_error(CANCELED, message="the job was canceled")
        result = job.latest_result()
        return read_job_error(job.get_meta().get(MetaKey.ERROR), result.exc_string if result is not None else None)

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
import time
from datetime import datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from engine.errors import Conflict, NotFound, Unavailable
from engine.jobs import CANCELED, JobError, JobKind, MetaKey, cancel_key, job_error, read_job_error, uses_key
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


_ACTIVE = (JobStatus.CREATED, JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.STARTED)


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

    def __init__(self, connection: Redis, *, result_ttl: int, failure_ttl: int, waiting: Redis | None = None) -> None:
        self.connection = connection
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.waiting = waiting or connection

    def queue(self, name: str) -> Queue:
        """Return the RQ queue ``name`` with the JSON serializer."""
        return Queue(name, connection=self.connection, serializer=JSONSerializer)

    def submit(
        self, kind: JobKind, payload: dict[str, Any], *, timeout: int, uses: tuple[str, int] | None = None
    ) -> Job:
        """Enqueue a job of ``kind`` on its queue unless an identical job is queued, running or done.

        Args:
            kind: The job's kind in the queue contract.
            payload: Its JSON argument.
            timeout: Its hard limit in seconds.
            uses: The model version it reads, which cannot be deleted while the job is queued or running.

        Raises:
            Unavailable: Redis cannot be reached.
        """
        job = self._submit(kind, payload, timeout=timeout)
        if uses is not None:
            self.mark_use(*uses, job.id)
        return job

    def mark_use(self, model: str, version: int, job_id: str) -> None:
        """Record that job ``job_id`` uses a model version (see :meth:`users_of`)."""
        try:
            key = uses_key(model, version)
            self.connection.zadd(key, {job_id: time.time()})
            self.connection.expire(key, self.result_ttl)
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def users_of(self, model: str, versions: list[int]) -> list[str]:
        """Return the ids of queued or running jobs that use one of ``versions``; forget the ended ones.

        Raises:
            Unavailable: Redis cannot be reached (a delete must not go ahead unchecked).
        """
        active = []
        try:
            for version in versions:
                key = uses_key(model, version)
                for raw in self.connection.zrange(key, 0, -1):
                    job_id = raw.decode() if isinstance(raw, bytes) else str(raw)
                    try:
                        status = Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer).get_status()
                    except NoSuchJobError:
                        status = None
                    if status in _ACTIVE and not self._canceled(job_id):
                        active.append(job_id)
                    else:
                        self.connection.zrem(key, job_id)
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        return active

    def _submit(self, kind: JobKind, payload: dict[str, Any], *, timeout: int) -> Job:
        job_id = job_id_for(kind.name, payload)
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
                meta={MetaKey.KIND: kind.name, MetaKey.PROGRESS: 0.0},
            )
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def fetch(self, job_id: str) -> Job:
        """Return a job by id.

        Raises:
            NotFound: ``job_not_found`` for an unknown or expired id.
            Unavailable: Redis cannot be reached.
        """
        if not JOB_ID.match(job_id):
            raise NotFound(f"no job {job_id!r} (unknown or expired)", code="job_not_found", field="id")
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JSONSerializer)
        except NoSuchJobError:
            raise NotFound(f"no job {job_id!r} (unknown or expired)", code="job_not_found", field="id") from None
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def wait(self, job: Job, seconds: float) -> None:
        """Block until the job ends or ``seconds`` pass (woken by RQ's result stream, no polling)."""
        try:
            if seconds <= 0 or job.get_status() in (JobStatus.FINISHED, JobStatus.FAILED):
                return
            # The blocking read goes over the waiting connection: the command connection's short read
            # timeout would cut it off.
            blocking = Job(job.id, connection=self.waiting, serializer=JSONSerializer)
            blocking.latest_result(timeout=max(1, math.ceil(seconds)))
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once, or flag a running one to stop.

        Raises:
            NotFound: Unknown job.
            Conflict: ``job_not_cancelable`` when it already ended.
        """
        job = self.fetch(job_id)
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

"""The one place where the API enqueues, reads, waits for and cancels jobs.

Jobs are enqueued by the dotted paths of the queue contract (:data:`engine.jobs.JOBS`),
so the API never imports ``worker``. Payloads and results are plain JSON (:class:`engine.jobs.JobSerializer`,
orjson; never pickle).

Job ids are random (``explain-`` + 128 random bits): knowing a payload tells nothing of its id. Identical
requests still share one computation through the result cache, keyed apart from the id: per tenant, by kind
and payload (model sha256, version, variant, rows, method, parameters, seed), so one tenant's request never
finds another's job. ``Idempotency-Key`` maps a tenant's retried submission to the job it first made.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import time
import weakref
from base64 import b64decode
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import as_text

from engine.errors import Conflict, InvalidRequest, NotFound, QueueFull, Unavailable
from engine.jobs import (
    ATTEMPT_FIELD,
    CANCELED,
    JobError,
    JobKind,
    JobSerializer,
    MetaKey,
    cancel_key,
    job_error,
    read_job_error,
    recorded,
    replay_lua,
    uses_key,
)
from engine.timestamps import format_utc
from engine.webhooks import Delivery
from service.errors import problem_of
from service.gateways import webhooks

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


Snapshot = tuple[JobStatus, dict[str, Any], bool, int, tuple[Result.Type, Any] | None]
"""A job's status, meta, cancel flag, runs begun and its latest result's type and return value
(:meth:`JobGateway.describe`'s reading)."""

_CLAIM_AND_ENQUEUE = (
    """
-- KEYS[1]: the request's cache key; KEYS[2]: its queue's list. ARGV[1]: the new job's id; ARGV[2]: the key's
-- TTL; ARGV[3]: the queue's cap (-1: none); ARGV[4..]: the job's creation, each command as its argument count
-- and then its arguments (RQ's enqueue as recorded on a pipeline).
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    return {0, redis.call('GET', KEYS[1])}
end
local waiting = redis.call('LLEN', KEYS[2])
local cap = tonumber(ARGV[3])
if cap >= 0 and waiting + 1 > cap then
    redis.call('DEL', KEYS[1])
    return {2, waiting}
end
"""
    + replay_lua(4)
    + """
return {1, waiting}
"""
)
_ENQUEUED, _FULL = 1, 2
"""What :data:`_CLAIM_AND_ENQUEUE` did besides 0 (the key named another job, whose id comes back): the job was
created and queued, or the queue was full (its length comes back)."""

_REUSABLE_ENDED = (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)
_ACTIVE = (JobStatus.CREATED, JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.STARTED)


class _Kept:
    """What a gateway of one Redis connection reuses across requests (a gateway is made per request)."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self.claim = connection.register_script(_CLAIM_AND_ENQUEUE)
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        found = self._queues.get(name)
        if found is None:
            found = self._queues[name] = Queue(name, connection=self.connection, serializer=JobSerializer)
        return found


_KEPT: weakref.WeakKeyDictionary[Redis, _Kept] = weakref.WeakKeyDictionary()


def _kept(connection: Redis) -> _Kept:
    found = _KEPT.get(connection)
    if found is None:
        found = _KEPT[connection] = _Kept(connection)
    return found


def new_job_id(kind: str) -> str:
    """Return a fresh, unguessable job id: the kind and 128 random bits."""
    return f"{kind}-{secrets.token_hex(16)}"


def request_digest(tenant: str, kind: str, payload: dict[str, Any]) -> str:
    """Return the cache digest of a request: its tenant, kind and canonical payload (never shown to anyone)."""
    canonical = json.dumps({"tenant": tenant, "kind": kind, "payload": payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_key(digest: str) -> str:
    """The Redis key that maps a request digest to the job computing it."""
    return f"onnxplain:cache:{digest}"


def idempotency_key(tenant: str, key: str) -> str:
    """The Redis key that maps a tenant's ``Idempotency-Key`` to its job (the client's key is hashed)."""
    digest = hashlib.sha256(tenant.encode() + b"\0" + key.encode()).hexdigest()
    return f"onnxplain:idempotency:{digest}"


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_idempotency_key(value: str | None) -> str | None:
    """Validate an ``Idempotency-Key`` header (1-255 visible ASCII characters).

    Raises:
        InvalidRequest: ``invalid_idempotency_key``.
    """
    if value is not None and not IDEMPOTENCY_KEY.match(value):
        raise InvalidRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters",
            code="invalid_idempotency_key",
            field="Idempotency-Key",
        )
    return value


class IdempotencyRecords:
    """A tenant's ``Idempotency-Key`` → the resource (job or audit) its first request made, for ``ttl`` seconds.

    A record holds the request's digest too: the same key sent with another request is refused, not answered
    with the wrong resource.

    Args:
        connection: The Redis connection.
        ttl: Seconds a key is remembered.
    """

    def __init__(self, connection: Redis, ttl: int) -> None:
        self.connection = connection
        self.ttl = ttl

    def recall(self, tenant: str, key: str, digest: str) -> str | None:
        """The id the key's first request made, or ``None`` when the key is new (or forgotten).

        Raises:
            InvalidRequest: ``idempotency_key_reused`` when the key was used for another request.
            RedisError: Redis cannot be reached.
        """
        raw = self.connection.get(idempotency_key(tenant, key))
        if raw is None:
            return None
        record = json.loads(raw)
        if record["request"] != digest:
            raise InvalidRequest(
                "this Idempotency-Key was used for a different request",
                code="idempotency_key_reused",
                field="Idempotency-Key",
            )
        return str(record["id"])

    def remember(self, tenant: str, key: str, digest: str, resource_id: str) -> str | None:
        """Record ``resource_id`` for the key unless a concurrent request did first; return that one's id then.

        Raises:
            InvalidRequest: ``idempotency_key_reused`` (the concurrent request was another one).
            RedisError: Redis cannot be reached.
        """
        record = json.dumps({"id": resource_id, "request": digest})
        if self.connection.set(idempotency_key(tenant, key), record, nx=True, ex=self.ttl):
            return None
        return self.recall(tenant, key, digest)


@dataclass(frozen=True)
class Submission:
    """A submitted job, and whether it was already there (``hit``: cache or idempotency) or made now (``miss``)."""

    job: Job
    cache: str


def _status_of(job: Job) -> JobStatus | None:
    """A job's status; a job whose key expired since it was fetched is gone (404), never a 500."""
    try:
        return job.get_status()
    except InvalidJobOperation:
        raise NotFound(f"no job {job.id!r} (unknown or expired)", code="job_not_found", field="id") from None


def _iso(value: datetime | None) -> str | None:
    return format_utc(value) if value is not None else None


class JobGateway:
    """Enqueue and observe jobs on Redis.

    Args:
        connection: The Redis connection.
        result_ttl: Seconds results stay readable.
        failure_ttl: Seconds failures stay readable.
        caps: Most jobs waiting per queue (none: unbounded); past it a submission is 503 ``queue_full``.
        queued_ttl: Seconds a job of a queue may exist unrun before RQ drops it (default: ``result_ttl``).
        retry_after_s: The ``Retry-After`` of ``queue_full``.
        request_id: The submitting request's id, kept in the meta of the jobs it enqueues.
    """

    def __init__(
        self,
        connection: Redis,
        *,
        result_ttl: int,
        failure_ttl: int,
        caps: Mapping[str, int] | None = None,
        queued_ttl: Mapping[str, int] | None = None,
        retry_after_s: int = 5,
        waiting: Redis | None = None,
        request_id: str | None = None,
    ) -> None:
        self.connection = connection
        self.request_id = request_id
        self.waiting = waiting or connection
        self.result_ttl = result_ttl
        self.failure_ttl = failure_ttl
        self.caps = dict(caps or {})
        self.queued_ttl = dict(queued_ttl or {})
        self.retry_after_s = retry_after_s

    def check_capacity(self, queue: str, adding: int = 1, waiting: int | None = None) -> None:
        """Refuse new work when ``queue`` already holds its cap of waiting jobs (``waiting``, when already read).

        Raises:
            QueueFull: ``queue_full`` (503 with Retry-After), rather than queueing forever.
        """
        cap = self.caps.get(queue)
        if cap is not None and (self.queue(queue).count if waiting is None else waiting) + adding > cap:
            raise self._full(queue, cap)

    def _full(self, queue: str, cap: int) -> QueueFull:
        return QueueFull(
            f"the {queue} queue is full ({cap} jobs waiting); retry later",
            code="queue_full",
            retry_after_s=self.retry_after_s,
        )

    def queue(self, name: str) -> Queue:
        """Return the RQ queue ``name`` with the JSON serializer (made once per connection: RQ's constructor
        resolves its serializer through a runtime protocol check, 20-50 µs, twice a submission)."""
        return _kept(self.connection).queue(name)

    def submit(
        self,
        kind: JobKind,
        payload: dict[str, Any],
        *,
        timeout: int,
        tenant: str,
        idempotency: str | None = None,
        uses: tuple[str, int] | None = None,
        callback: str | None = None,
    ) -> Submission:
        """Return the tenant's job for this request: its ``Idempotency-Key``'s job, else the cached identical job
        (queued, running or succeeded), else a new job under a random id.

        Args:
            kind: The job's kind.
            payload: The worker function's argument.
            timeout: The job's hard limit in seconds.
            tenant: Who submits; the cache and idempotency keys are this tenant's alone.
            idempotency: The request's ``Idempotency-Key``, if any (checked by :func:`check_idempotency_key`).
            uses: The model version it reads, which cannot be deleted while the job is queued or running.
            callback: A checked ``callback_url``: part of the request (another URL is another job), and the new
                job's end is posted there (:mod:`service.gateways.webhooks`).

        Raises:
            InvalidRequest: ``idempotency_key_reused`` when the key was used for another request.
            Unavailable: Redis cannot be reached.
        """
        keyed = payload if callback is None else {**payload, "callback_url": callback}
        submission = self._submit(
            kind, payload, keyed, timeout=timeout, tenant=tenant, idempotency=idempotency, uses=uses
        )
        if uses is not None and submission.cache == "hit":  # a new job was marked in its enqueue's transaction
            self.mark_use(*uses, submission.job.id)
        if callback is not None and submission.cache == "miss":  # a hit's job already posts to this URL
            webhooks.schedule(self.connection, Delivery.new("job", submission.job.id, tenant, callback))
        return submission

    def mark_use(self, model: str, version: int, job_id: str) -> None:
        """Record that job ``job_id`` uses a model version (see :meth:`users_of`)."""
        try:
            with self.connection.pipeline(transaction=False) as pipe:  # one round trip, not two
                self._queue_use(pipe, model, version, job_id)
                pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def _queue_use(self, pipe: Pipeline, model: str, version: int, job_id: str) -> None:
        key = uses_key(model, version)
        pipe.zadd(key, {job_id: time.time()})
        pipe.expire(key, self.result_ttl)

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
                        status = Job.fetch(job_id, connection=self.connection, serializer=JobSerializer).get_status()
                    except NoSuchJobError:
                        status = None
                    if status in _ACTIVE and not self._canceled(job_id):
                        active.append(job_id)
                    else:
                        self.connection.zrem(key, job_id)
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        return active

    def _submit(
        self,
        kind: JobKind,
        payload: dict[str, Any],
        keyed: dict[str, Any],
        *,
        timeout: int,
        tenant: str,
        idempotency: str | None,
        uses: tuple[str, int] | None,
    ) -> Submission:
        digest = request_digest(tenant, kind.name, keyed)
        records = IdempotencyRecords(self.connection, self.result_ttl)
        try:
            if idempotency is not None:
                remembered = self._job_or_none(records.recall(tenant, idempotency, digest))
                if remembered is not None:
                    return Submission(remembered, "hit")
            submission = self._cached_or_new(kind, payload, digest, timeout=timeout, tenant=tenant, uses=uses)
            if idempotency is not None:
                first = records.remember(tenant, idempotency, digest, submission.job.id)
                # A concurrent retry with the same key got there first: answer with its job.
                remembered = self._job_or_none(first)
                if remembered is not None:
                    return Submission(remembered, "hit")
            return submission
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc

    def _job_or_none(self, job_id: str | None) -> Job | None:
        if job_id is None:
            return None
        try:
            return Job.fetch(job_id, connection=self.connection, serializer=JobSerializer)
        except NoSuchJobError:
            return None  # expired with its job: submit afresh

    def _cached_or_new(
        self,
        kind: JobKind,
        payload: dict[str, Any],
        digest: str,
        *,
        timeout: int,
        tenant: str,
        uses: tuple[str, int] | None,
    ) -> Submission:
        key = cache_key(digest)
        job_id = new_job_id(kind.name)
        queue = self.queue(kind.queue)
        cap = self.caps.get(kind.queue)
        # RQ's enqueue of the new job, recorded on a pipeline that is never sent: the script below replays it
        # when the claim succeeds, so claiming the key, checking the queue's room and creating the job are one
        # atomic round trip instead of two (a cache hit then drops the recording).
        with self.connection.pipeline() as recording:
            job = self._queue_job(kind, payload, job_id, recording, timeout=timeout, tenant=tenant, uses=uses)
            commands = recorded(recording.command_stack)
        claim = _kept(self.connection).claim
        for _ in range(3):
            outcome, value = claim(
                keys=[key, queue.key], args=[job_id, self.result_ttl, -1 if cap is None else cap, *commands]
            )
            if outcome == _ENQUEUED:
                return Submission(job, "miss")
            if outcome == _FULL and cap is not None:  # refused: the script gave the key back, so it names no job
                raise self._full(kind.queue, cap)
            existing = self._reusable(value)
            if existing is not None:
                return Submission(existing, "hit")
            # The cached job failed, was canceled or expired: this request computes afresh.
            self.connection.delete(key)
        self.check_capacity(kind.queue)
        self.connection.set(key, job_id, ex=self.result_ttl)
        return Submission(self._enqueue(kind, payload, job_id, timeout=timeout, tenant=tenant, uses=uses), "miss")

    def _reusable(self, cached: bytes | str) -> Job | None:
        """The cached job, when it can still answer (queued, running or succeeded, and not canceled)."""
        try:
            cached_id = cached.decode() if isinstance(cached, bytes) else str(cached)
            existing = Job.fetch(cached_id, connection=self.connection, serializer=JobSerializer)
        except NoSuchJobError:
            return None
        try:
            if _status_of(existing) in _REUSABLE_ENDED or self._canceled(existing.id):
                return None
        except NotFound:
            return None  # expired a moment ago
        return existing

    def _enqueue(
        self,
        kind: JobKind,
        payload: dict[str, Any],
        job_id: str,
        *,
        timeout: int,
        tenant: str,
        uses: tuple[str, int] | None = None,
    ) -> Job:
        """Create and enqueue the job, and mark the model version it uses, in one transaction (one round trip:
        RQ alone makes two, the mark a third)."""
        with self.connection.pipeline() as pipe:
            job = self._queue_job(kind, payload, job_id, pipe, timeout=timeout, tenant=tenant, uses=uses)
            pipe.execute()
        return job

    def _queue_job(
        self,
        kind: JobKind,
        payload: dict[str, Any],
        job_id: str,
        pipe: Pipeline,
        *,
        timeout: int,
        tenant: str,
        uses: tuple[str, int] | None,
    ) -> Job:
        """Queue on ``pipe`` RQ's creation and enqueue of the job, and the mark of the model version it uses."""
        job = self.queue(kind.queue).enqueue(
            kind.function,
            payload,
            pipeline=pipe,
            # RQ's default description is the repr of the whole payload (every row), built for nothing.
            description=f"onnxplain {kind.name} job",
            job_id=job_id,
            job_timeout=timeout,
            result_ttl=self.result_ttl,
            failure_ttl=self.failure_ttl,
            ttl=self.queued_ttl.get(kind.queue, self.result_ttl),
            retry=Retry(max=1),
            meta={
                MetaKey.KIND: kind.name,
                MetaKey.PROGRESS: 0.0,
                MetaKey.TENANT: tenant,
                MetaKey.REQUEST_ID: self.request_id,
            },
        )
        if uses is not None:
            self._queue_use(pipe, *uses, job_id)
        return job

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
            job = Job.fetch(job_id, connection=self.connection, serializer=JobSerializer)
        except NoSuchJobError:
            raise missing from None
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        if tenant is not None and job.get_meta().get(MetaKey.TENANT) != tenant:
            raise missing
        return job

    def wait(self, job: Job, seconds: float, *, fresh: bool = False) -> Snapshot | None:
        """Block until the job ends or ``seconds`` pass (woken by RQ's result stream, no polling); return the job's
        state as :meth:`describe` reads it, when the wait read it too.

        ``fresh``: the job was enqueued by this request, so it has not ended before now and its status need not
        be read first (the stream is read from its start: a result that landed meanwhile wakes the read at once).
        The reads of the job's state are pipelined behind the blocking read: Redis runs them the moment it
        returns, so waking up and reading what to answer cost one round trip, not two.
        """
        try:
            if seconds <= 0 or (not fresh and _status_of(job) in (JobStatus.FINISHED, JobStatus.FAILED)):
                return None
            # The blocking read goes over the waiting connection: the command connection's short read
            # timeout would cut it off. "0-0": from the stream's first entry, as RQ's own blocking read.
            with self.waiting.pipeline(transaction=False) as pipe:
                pipe.xread({Result.get_key(job.id): "0-0"}, block=max(1, math.ceil(seconds)) * 1000)
                self._queue_state(pipe, job)
                streamed, *state = pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
        latest = streamed[0][1][-1] if streamed else None  # one stream asked; its most recent entry
        return self._restore_state(job, state, latest)

    def cancel(self, job_id: str, tenant: str | None) -> Job:
        """Cancel a queued job at once, or flag a running one to stop (``tenant`` as in :meth:`fetch`).

        Raises:
            NotFound: Unknown job, or another tenant's.
            Conflict: ``job_not_cancelable`` when it already ended.
        """
        job = self.fetch(job_id, tenant)
        status = _status_of(job)
        if status in (JobStatus.FINISHED, JobStatus.FAILED):
            raise Conflict(f"job {job_id!r} already ended ({_STATUS[status]})", code="job_not_cancelable")
        # Workers run jobs in-process (SimpleWorker), so a running job is
        # stopped cooperatively: its model calls check this flag.
        self.connection.set(cancel_key(job_id), 1, ex=self.result_ttl)
        if status != JobStatus.STARTED and status != JobStatus.CANCELED:
            job.cancel()
        elif status == JobStatus.STARTED and _status_of(job) == JobStatus.FINISHED:
            # It finished before the flag went up (or before its next check saw it): its result stands, and
            # the answer is the one a cancel arriving a moment later gets. From here on the flag wins.
            self.connection.delete(cancel_key(job_id))
            raise Conflict(f"job {job_id!r} already ended (succeeded)", code="job_not_cancelable")
        return job

    def _canceled(self, job_id: str) -> bool:
        return bool(self.connection.exists(cancel_key(job_id)))

    def _snapshot(self, job: Job) -> Snapshot:
        """A job's status, meta, cancel flag and latest result, read in one round trip instead of four.

        Read-only and untransacted: RQ writes a job's final status and its result in one transaction, so a
        status that has ended comes with its result.
        """
        with self.connection.pipeline(transaction=False) as pipe:
            self._queue_state(pipe, job)
            pipe.xrevrange(Result.get_key(job.id), "+", "-", count=1)
            *state, latest = pipe.execute()
        return self._restore_state(job, state, latest[0] if latest else None)

    @staticmethod
    def _queue_state(pipe: Pipeline, job: Job) -> None:
        pipe.hmget(job.key, "status", "meta", ATTEMPT_FIELD)
        pipe.exists(cancel_key(job.id))

    def _restore_state(self, job: Job, state: list[Any], latest: tuple[bytes, Any] | None) -> Snapshot:
        """The :data:`Snapshot` of what :meth:`_queue_state` read (``state``) and the latest result entry."""
        (status, meta, attempt), canceled = state
        if not status:  # as Job.get_status: the key expired since the job was fetched
            raise NotFound(f"no job {job.id!r} (unknown or expired)", code="job_not_found", field="id")
        job.meta = job.serializer.loads(meta) if meta else {}
        # A job started by a worker from before the count moved to its own field has it in its meta.
        runs = int(attempt) if attempt else int(job.meta.get(MetaKey.ATTEMPT) or 0)
        result = None
        if latest:
            # The two fields of RQ's stream entry that an answer needs, as Result.restore reads them (which
            # also parses its times and resolves its serializer twice: 0.1 ms of a sync answer).
            _, entry = latest
            returned = entry.get(b"return_value")
            value = job.serializer.loads(b64decode(returned)) if returned is not None else None
            result = (Result.Type(int(entry[b"type"])), value)
        return JobStatus(as_text(status)), job.meta, bool(canceled), runs, result

    def describe(self, job: Job, *, location: str, state: Snapshot | None = None) -> dict[str, Any]:
        """Return the public JSON of a job: status, progress, times, result or error (``state``: as :meth:`wait`
        just read it)."""
        status, meta, canceled, attempt, result = state or self._snapshot(job)
        public = _STATUS.get(status, "queued")
        # A job canceled while running may still finish before its next check of the flag; the cancel was
        # answered "canceled", so that is what it stays.
        if canceled and public in ("queued", "running", "failed", "succeeded"):
            public = "canceled"
        body: dict[str, Any] = {
            "id": job.id,
            "kind": meta.get(MetaKey.KIND, "job"),
            "status": public,
            "progress": 1.0 if public == "succeeded" else meta.get(MetaKey.PROGRESS),
            "attempt": attempt,
            "created_at": _iso(job.created_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
            "location": location,
        }
        if public == "succeeded":
            body["result"] = result[1] if result is not None and result[0] == Result.Type.SUCCESSFUL else None
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

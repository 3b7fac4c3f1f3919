"""What a worker reports about each job: one JSON log line, the job's duration by outcome, and its tallies.

Every job function is wrapped by :func:`observed`. While the job runs, :data:`engine.logs.REQUEST_ID` holds the
request id of the API request that submitted it (``job.meta``), so every line logged for the job carries it. When
it ends, the job's duration and the engine's measurements gathered meanwhile (session-cache lookups, model loads)
are added to the Redis hash :data:`engine.telemetry.TALLY_KEY`: every API host's ``/metrics`` reads them from
there, however many worker hosts there are. A failure's are written at once (:func:`flush`); a success's go in
the transaction that stores its result (:func:`queue_tallies`, from :class:`worker.heartbeat.HeartbeatWorker`),
so they are visible with the result and cost the job no round trip of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from contextvars import ContextVar
from time import perf_counter
from typing import Any

from redis.exceptions import RedisError
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from engine.errors import JobCanceled, OnnxplainError
from engine.jobs import MetaKey
from engine.logs import REQUEST_ID, valid_request_id
from engine.telemetry import JOB_DURATION, TALLY_KEY, Tally, observe

log = logging.getLogger("onnxplain.job")

TALLY = Tally()
"""This process's measurements not yet written to Redis (the sink :mod:`worker.__main__` installs)."""

METHOD: ContextVar[str | None] = ContextVar("onnxplain_job_method", default=None)
"""The method a running job uses, when only the job itself can tell (an audit chunk reads it from its audit)."""

JobFunction = Callable[[dict[str, Any]], dict[str, Any]]


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "succeeded"
    if isinstance(exc, JobCanceled):
        return "canceled"
    if isinstance(exc, JobTimeoutException):
        return "timeout"
    return "failed"


def _method_of(payload: dict[str, Any]) -> str:
    # An explanation's plan names its method; a variant build its kind (int8_dynamic, prune_magnitude, ...).
    found = METHOD.get() or payload.get("method") or payload.get("kind")
    return str(found) if found else "none"


def observed(function: JobFunction) -> JobFunction:
    """Wrap a job function: request id for its log lines, one line and one duration when it ends, tallies flushed."""

    @functools.wraps(function)
    def run(payload: dict[str, Any]) -> dict[str, Any]:
        job = get_current_job()
        meta = job.meta if job is not None else {}
        token = REQUEST_ID.set(valid_request_id(meta.get(MetaKey.REQUEST_ID)))
        method_token = METHOD.set(None)
        started = perf_counter()
        failure: BaseException | None = None
        try:
            return function(payload)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            elapsed = perf_counter() - started
            kind = str(meta.get(MetaKey.KIND, function.__name__))
            method, outcome = _method_of(payload), _outcome(failure)
            observe(JOB_DURATION, (kind, method, outcome), elapsed)
            fields: dict[str, Any] = {
                "job_id": job.id if job is not None else None,
                "kind": kind,
                "method": method,
                "outcome": outcome,
                "duration_s": round(elapsed, 6),
                "worker": job.worker_name if job is not None else None,
            }
            if isinstance(failure, OnnxplainError):
                fields["code"] = failure.code
            log.info("job %s %s", fields["job_id"], outcome, extra={"fields": fields})
            if job is not None and failure is not None:
                flush(job.connection)
            METHOD.reset(method_token)
            REQUEST_ID.reset(token)

    return run


def queue_tallies(pipeline: Any) -> dict[str, float]:
    """Queue this process's pending tallies on ``pipeline``; return them, to :meth:`Tally.restore` if it fails."""
    pending = TALLY.drain()
    for field, amount in pending.items():
        pipeline.hincrbyfloat(TALLY_KEY, field, amount)
    return pending


def flush(connection: Any) -> None:
    """Add this process's pending tallies to Redis (kept for the next flush when Redis fails)."""
    pending: dict[str, float] = {}
    try:
        with connection.pipeline(transaction=False) as pipeline:
            pending = queue_tallies(pipeline)
            if pending:
                pipeline.execute()
    except (RedisError, OSError):
        # A metric must never fail a job: the increments wait for the next job's flush.
        TALLY.restore(pending)
        log.warning("could not write job metrics to Redis; kept for the next job", exc_info=True)

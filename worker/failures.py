"""Record why a job failed, as the :class:`~engine.jobs.JobError` the API shows."""

from __future__ import annotations

import logging
from types import TracebackType

from redis.exceptions import RedisError
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from engine.audits.store import AuditStore
from engine.errors import ModelLimitExceeded, NotFound, OnnxplainError
from engine.jobs import JOBS, WORKER_LOST, JobError, MetaKey, job_error
from engine.models import quarantine
from engine.runtime.limits import MEMORY_LIMIT, TIME_LIMIT
from engine.timestamps import utc_now
from worker.context import context

log = logging.getLogger(__name__)

_RUN_MODELS = frozenset(JOBS[kind].function for kind in ("explain", "variant", "audit_chunk"))
"""The jobs that run a model (an audit's merge only writes files)."""

CRASHES = frozenset({WORKER_LOST, MEMORY_LIMIT, TIME_LIMIT})
"""Failures that say the model broke the runtime (the process died, or a per-call cap stopped it), not the input:
such a job keeps its retry, and a model version that fails so on the last attempt too is quarantined."""


def record_failure(
    job: Job, exc_type: type[BaseException], exc_value: BaseException, traceback: TracebackType | None
) -> bool:
    """Store the failure in ``job.meta["error"]``; never swallow it.

    Errors the engine raised on purpose are deterministic, so the job is not
    retried; anything else (a crash, a lost connection, a per-call cap) keeps its retry. A crash on the last
    attempt quarantines the model version (:func:`quarantine_after`). RQ calls it for a job that raised, and the
    registry cleanup for a job whose worker died.

    Returns:
        True, so RQ goes on to record the job as failed.
    """
    # Library wrappers may re-raise RQ's timeout as an engine error: look down the chain.
    if isinstance(exc_value, AbandonedJobError):
        # Called by the registry cleanup (the sweeper's or RQ's maintenance) for a job whose worker died: no
        # traceback, and not a bug of this process.
        error = job_error(WORKER_LOST, message="the worker running the job died (its heartbeat lapsed)")
    elif any(isinstance(e, JobTimeoutException) for e in _chain(exc_value)):
        error = job_error(exc_value, timeout_s=float(job.timeout or 0))
        job.retries_left = 0
    elif any(isinstance(e, RedisError | ConnectionError) for e in _chain(exc_value)):
        # A lost Redis (even wrapped in an engine error by a library callback) is not the input's fault: the
        # job keeps its retry and runs again once Redis is back.
        error = job_error(exc_value if not isinstance(exc_value, OnnxplainError) else RuntimeError(str(exc_value)))
        log.warning("job %s lost its Redis connection; it keeps its retry", job.id)
    elif isinstance(exc_value, ModelLimitExceeded):
        error = job_error(exc_value)  # keeps its retry: a second run over the cap quarantines the model
    elif isinstance(exc_value, OnnxplainError):
        error = job_error(exc_value)
        job.retries_left = 0
    else:
        error = job_error(exc_value)
        log.error("job %s failed unexpectedly", job.id, exc_info=(exc_type, exc_value, traceback))
    job.meta[MetaKey.ERROR] = error.to_dict()
    job.save_meta()
    if not job.should_retry:
        quarantine_after(job, error)
    return True


def quarantine_after(job: Job, error: JobError) -> bool:
    """Quarantine the model version a job ran when its last attempt ended in a crash (:data:`CRASHES`).

    Returns:
        Whether a version was quarantined now.
    """
    if error.code not in CRASHES:
        return False
    ran = _model_of(job)
    if ran is None:
        return False
    try:
        model = context().registry.get(*ran)
    except NotFound:
        return False  # deleted meanwhile: nothing left to serve
    record = quarantine.Quarantine(code=error.code, job=job.id, since=utc_now(), message=error.message)
    placed = quarantine.place(model.path, record)
    if placed:
        log.error(
            "model %s version %d quarantined: job %s ended %s on its last attempt",
            model.name,
            model.version,
            job.id,
            error.code,
        )
    return placed


def _model_of(job: Job) -> tuple[str, int] | None:
    """The model version a job's payload names: explain and variant jobs name it, audit jobs their audit."""
    payload = job.args[0] if job.args else None
    if not isinstance(payload, dict) or job.func_name not in _RUN_MODELS:
        return None
    if isinstance(payload.get("audit"), str):
        try:
            payload = AuditStore(context().settings.audit_dir).open(payload["audit"]).info["model"]
        except (OnnxplainError, OSError, ValueError, KeyError):
            return None  # the audit is gone: nothing to tie the crash to
        if not isinstance(payload, dict):
            return None
    name, version = payload.get("model", payload.get("name")), payload.get("version")
    if isinstance(name, str) and isinstance(version, int) and not isinstance(version, bool):
        return name, version
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen

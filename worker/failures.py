"""Record why a job failed, as the :class:`~engine.jobs.JobError` the API shows."""

from __future__ import annotations

import logging
from types import TracebackType

from redis.exceptions import RedisError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from engine.errors import OnnxplainError
from engine.jobs import MetaKey, job_error

log = logging.getLogger(__name__)


def record_failure(
    job: Job, exc_type: type[BaseException], exc_value: BaseException, traceback: TracebackType | None
) -> bool:
    """Store the failure in ``job.meta["error"]``; never swallow it.

    Errors the engine raised on purpose are deterministic, so the job is not
    retried; anything else (a crash, a lost connection) keeps its retry.

    Returns:
        True, so RQ goes on to record the job as failed.
    """
    # Library wrappers may re-raise RQ's timeout as an engine error: look down the chain.
    if any(isinstance(e, JobTimeoutException) for e in _chain(exc_value)):
        error = job_error(exc_value, timeout_s=float(job.timeout or 0))
        job.retries_left = 0
    elif any(isinstance(e, RedisError | ConnectionError) for e in _chain(exc_value)):
        # A lost Redis (even wrapped in an engine error by a library callback) is not the input's fault: the
        # job keeps its retry and runs again once Redis is back.
        error = job_error(exc_value if not isinstance(exc_value, OnnxplainError) else RuntimeError(str(exc_value)))
        log.warning("job %s lost its Redis connection; it keeps its retry", job.id)
    elif isinstance(exc_value, OnnxplainError):
        error = job_error(exc_value)
        job.retries_left = 0
    else:
        error = job_error(exc_value)
        log.error("job %s failed unexpectedly", job.id, exc_info=(exc_type, exc_value, traceback))
    job.meta[MetaKey.ERROR] = error.to_dict()
    job.save_meta()
    return True


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen

"""Record why a job failed, as ``{code, message}`` the API can show."""

from __future__ import annotations

import logging
from types import TracebackType

from rq.job import Job
from rq.timeouts import JobTimeoutException

from engine.errors import OnnxplainError

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
        exc_value = JobTimeoutException(str(exc_value))
    if isinstance(exc_value, OnnxplainError):
        # The class name lets the API give the same status as a synchronous error (service/errors.py).
        error = {**exc_value.to_dict(), "title": exc_value.title, "error_class": type(exc_value).__name__}
        job.retries_left = 0
    elif isinstance(exc_value, JobTimeoutException):
        error = {
            "code": "timeout",
            "message": f"the job ran past its {job.timeout} s limit",
            "title": "Timeout",
        }
        job.retries_left = 0
    else:
        error = {
            "code": "internal_error",
            "message": f"{exc_type.__name__}: {exc_value}",
            "title": "Job failed",
        }
        log.error("job %s failed unexpectedly", job.id, exc_info=(exc_type, exc_value, traceback))
    job.meta["error"] = error
    job.save_meta()
    return True


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen

"""The cooperative cancel flag of the running job (workers run jobs in-process, so they stop themselves)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError
from rq import get_current_job

from engine.jobs import cancel_key

_CHECK_EVERY_S = 0.25
log = logging.getLogger(__name__)


def cancel_flag() -> Callable[[], bool]:
    """Return a cheap check of the current job's cancel flag (one Redis read per 250 ms, the first after 250 ms)."""
    job = get_current_job()
    if job is None:
        return lambda: False
    key = cancel_key(job.id)
    # The first read comes after the first interval, not at the first model call: a short job never waits on
    # one (a cancel it did not see still wins, see JobGateway.cancel), and a queued job's cancel removed it.
    last = [time.monotonic(), False]

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last[0] >= _CHECK_EVERY_S:
            last[0] = now
            try:
                last[1] = bool(job.connection.exists(key))
            except RedisError:
                # A lost connection is no reason to stop, and never the job's failure: go on, check again later.
                log.warning("cannot read the cancel flag of job %s; going on", job.id)
        return bool(last[1])

    return should_stop
